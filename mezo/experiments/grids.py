"""The paper's hyperparameter grids, expanded into runs with readable output folders.

Sources (Malladi et al. 2023, arXiv:2305.17333, Appendix E.3):
  * Table 15, RoBERTa-large: MeZO bs 64, lr {1e-7,1e-6,1e-5}, eps 1e-3, wd 0; MeZO (prefix) bs 64,
    lr {1e-2,5e-3,1e-3}, eps 1e-1, 5 prefix tokens; MeZO (LoRA) bs 64, lr {1e-5,5e-5,1e-4},
    eps 1e-3, wd 0.1, (r, alpha) = (8, 16); FT (Adam) bs {2,4,8} (k=16) / {8,16,32} (k=512),
    lr {1e-5,3e-5,5e-5}; FT (prefix) bs {8,16,32}, lr {1e-2,3e-2,5e-2}; FT (LoRA) bs {4,8,16},
    lr {1e-4,3e-4,5e-4}. MeZO: 100K steps, constant lr; FT: 1K steps, linear; eval every 1/10.
    Tasks SST-2 SST-5 SNLI MNLI TREC RTE, k in {16, 512}, data seeds 13 21 42 87 100.
  * Table 16, OPT: MeZO bs 16, lr {1e-6,1e-7} ({1e-6,5e-7,1e-7} SQuAD/DROP), eps 1e-3;
    MeZO (prefix) lr {1e-2,1e-3} ({5e-2,1e-2,5e-3}), eps 1e-1, 5 prefix tokens; MeZO (LoRA)
    lr {1e-4,5e-5} ({1e-4,5e-5,1e-5}), eps 1e-2, (8, 16); FT (Adam) bs 8, lr {1e-5,5e-5,8e-5},
    5 epochs (625 steps on 1000 examples), linear. wd 0. MeZO 20K steps, constant, eval every 1/5.
    1000 train / 500 dev (100 for CB and Copa, large_models/mezo.sh) / 1000 test examples.
  * Single-run defaults (no --grid_search) are the reference READMEs' example commands:
    large_models/README.md (OPT MeZO 1e-7, prefix 1e-3, LoRA 5e-5) and medium_models/README.md
    (RoBERTa MeZO 1e-6, prefix 1e-2, LoRA 1e-4; FT 1e-5 bs 8, FT prefix 1e-2, FT LoRA 1e-4).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from itertools import product

OPT_TASKS = ["SST2", "RTE", "CB", "BoolQ", "WSC", "WiC", "MultiRC", "Copa", "ReCoRD", "SQuAD", "DROP"]
OPT_GENERATION = {"SQuAD", "DROP"}
OPT_SMALL_DEV = {"CB": 100, "Copa": 100}  # large_models/mezo.sh: "<1000 training examples"
# large_models/finetune.sh: micro-batch that fits an 80GB A100 for FT (gradient accumulation to 8)
OPT_FT_MICRO_BATCH = {"MultiRC": 2, "ReCoRD": 2, "DROP": 1}
ROBERTA_TASKS = ["SST-2", "SST-5", "SNLI", "MNLI", "TREC", "RTE"]
ROBERTA_KS = [16, 512]
ROBERTA_SEEDS = [13, 21, 42, 87, 100]
OPT_SEEDS = [0]
DEFAULT_MODEL = {"roberta": "roberta-large", "opt": "facebook/opt-13b"}
ICL_DEMOS = 32  # large_models/icl.sh

# mode -> (learning rates, single-run lr, eps, batch sizes, extra flags)
ROBERTA_GRID = {
    "mezo": dict(lr=[1e-7, 1e-6, 1e-5], default_lr=1e-6, eps=1e-3, bs=[64], wd=0.0),
    "mezo_prefix": dict(lr=[1e-2, 5e-3, 1e-3], default_lr=1e-2, eps=1e-1, bs=[64], wd=0.0),
    "mezo_lora": dict(lr=[1e-5, 5e-5, 1e-4], default_lr=1e-4, eps=1e-3, bs=[64], wd=0.1),
    "ft": dict(lr=[1e-5, 3e-5, 5e-5], default_lr=1e-5, bs={16: [2, 4, 8], 512: [8, 16, 32]}, default_bs=8, wd=0.0),
    "ft_prefix": dict(lr=[1e-2, 3e-2, 5e-2], default_lr=1e-2, bs=[8, 16, 32], default_bs=8, wd=0.0),
    "ft_lora": dict(lr=[1e-4, 3e-4, 5e-4], default_lr=1e-4, bs=[4, 8, 16], default_bs=8, wd=0.0),
    "zero_shot": dict(),
    "linear_probe": dict(),
}
OPT_GRID = {
    "mezo": dict(lr=[1e-6, 1e-7], lr_gen=[1e-6, 5e-7, 1e-7], default_lr=1e-7, eps=1e-3, bs=[16]),
    "mezo_prefix": dict(lr=[1e-2, 1e-3], lr_gen=[5e-2, 1e-2, 5e-3], default_lr=1e-3, eps=1e-1, bs=[16]),
    "mezo_lora": dict(lr=[1e-4, 5e-5], lr_gen=[1e-4, 5e-5, 1e-5], default_lr=5e-5, eps=1e-2, bs=[16]),
    "ft": dict(lr=[1e-5, 5e-5, 8e-5], default_lr=1e-5, bs=[8]),
    "zero_shot": dict(),
    "icl": dict(),
}
DEFAULT_MODES = {"roberta": ["mezo"], "opt": ["mezo", "mezo_prefix", "mezo_lora"]}
MODE_FLAGS = {  # how a mode is asked of the training script
    "mezo": {"trainer": "mezo"},
    "mezo_prefix": {"trainer": "mezo", "prefix_tuning": True, "num_prefix": 5},
    "mezo_lora": {"trainer": "mezo", "use_lora": True, "lora_r": 8, "lora_alpha": 16},
    "ft": {"trainer": "ft", "optimizer": "adam"},
    "ft_prefix": {"trainer": "ft", "optimizer": "adam", "prefix_tuning": True, "num_prefix": 5},
    "ft_lora": {"trainer": "ft", "optimizer": "adam", "use_lora": True, "lora_r": 8, "lora_alpha": 16},
    "zero_shot": {"zero_shot": True},
    "icl": {"icl": True, "num_demos": ICL_DEMOS},
    "linear_probe": {"trainer": "linear_probe"},
}


def fmt(x: float) -> str:
    """1e-06 -> '1e-6', 5e-05 -> '5e-5', 0.1 -> '1e-1' (folder names and tags)."""
    s = f"{x:.0e}" if float(f"{x:.0e}") == x else f"{x:g}"
    return re.sub(r"e([+-])0*(\d)", lambda m: "e" + ("-" if m.group(1) == "-" else "") + m.group(2), s)


@dataclass
class Run:
    family: str
    task: str
    mode: str
    seed: int
    args: dict = field(default_factory=dict)
    k: int | None = None
    tag: str = ""

    @property
    def rel_dir(self) -> str:
        parts = [self.family, self.task] + ([f"k{self.k}"] if self.k else []) + [self.mode, self.tag]
        return os.path.join(*parts)

    @property
    def name(self) -> str:
        return self.rel_dir.replace(os.sep, "-")


def _tag(mode: str, lr, eps, bs, seed: int, default_bs) -> str:
    if mode == "icl":
        return f"demos{ICL_DEMOS}_seed{seed}"
    if lr is None:
        return f"seed{seed}"
    parts = [f"lr{fmt(lr)}"]
    if eps is not None:
        parts.append(f"eps{fmt(eps)}")
    if bs is not None and bs != default_bs:
        parts.append(f"bs{bs}")
    return "_".join(parts + [f"seed{seed}"])


def _opt_run(task, mode, seed, lr, bs, model) -> Run:
    g = OPT_GRID[mode]
    args = {"model_name": model, "model_family": "opt", "task_name": task, **MODE_FLAGS[mode],
            "num_train": ICL_DEMOS if mode == "icl" else 1000, "num_dev": OPT_SMALL_DEV.get(task, 500),
            "num_eval": 1000, "train_set_seed": seed, "dtype": "fp16"}
    if mode in ("zero_shot", "icl"):
        args["num_train"] = 0 if mode == "zero_shot" else ICL_DEMOS
    elif mode == "ft":
        micro = OPT_FT_MICRO_BATCH.get(task, bs)
        args.update(batch_size=micro, gradient_accumulation_steps=bs // micro, learning_rate=fmt(lr),
                    max_steps=625, eval_steps=125, save_steps=125, lr_scheduler_type="linear", weight_decay=0)
        if micro == bs:
            del args["gradient_accumulation_steps"]
    else:
        args.update(batch_size=bs, learning_rate=fmt(lr), zo_eps=fmt(g["eps"]), max_steps=20000,
                    eval_steps=4000, save_steps=4000, lr_scheduler_type="constant", weight_decay=0)
    eps = g.get("eps")
    return Run("opt", task, mode, seed, args, tag=_tag(mode, lr, eps, None, seed, None))


def _roberta_run(task, k, mode, seed, lr, bs, model) -> Run:
    g = ROBERTA_GRID[mode]
    args = {"model_name": model, "model_family": "roberta", "task_name": task, **MODE_FLAGS[mode],
            "k": k, "data_seed": seed, "seed": seed}
    if mode.startswith("mezo"):
        args.update(batch_size=bs, learning_rate=fmt(lr), zo_eps=fmt(g["eps"]), weight_decay=g["wd"],
                    max_steps=100000, eval_steps=10000, save_steps=10000, lr_scheduler_type="constant")
    elif mode.startswith("ft"):
        args.update(batch_size=bs, learning_rate=fmt(lr), weight_decay=g["wd"], max_steps=1000,
                    eval_steps=100, save_steps=100, lr_scheduler_type="linear")
    eps = g.get("eps")
    default_bs = g.get("default_bs", 64)
    return Run("roberta", task, mode, seed, args, k=k, tag=_tag(mode, lr, eps, bs, seed, default_bs))


def _lrs_bss(grid: dict, grid_search: bool, task: str, k: int | None):
    if "lr" not in grid:
        return [(None, None)]
    lrs = grid["lr_gen"] if ("lr_gen" in grid and task in OPT_GENERATION) else grid["lr"]
    bss = grid["bs"][k] if isinstance(grid["bs"], dict) else grid["bs"]
    if not grid_search:
        return [(grid["default_lr"], grid.get("default_bs", bss[0]))]
    return list(product(lrs, bss))


def expand(family: str, *, grid_search: bool = False, model_name: str | None = None,
           tasks: list[str] | None = None, modes: list[str] | None = None,
           seeds: list[int] | None = None, ks: list[int] | None = None) -> list[Run]:
    """Every run of the paper's grid for one model family, in a fixed order."""
    model = model_name or DEFAULT_MODEL[family]
    modes = modes or DEFAULT_MODES[family]
    runs: list[Run] = []
    if family == "opt":
        for task, mode, seed in product(tasks or OPT_TASKS, modes, seeds or OPT_SEEDS):
            if mode not in OPT_GRID:
                raise ValueError(f"mode {mode!r} is not in the paper's OPT grid: {sorted(OPT_GRID)}")
            for lr, bs in _lrs_bss(OPT_GRID[mode], grid_search, task, None):
                runs.append(_opt_run(task, mode, seed, lr, bs, model))
    elif family == "roberta":
        for task, k, mode, seed in product(tasks or ROBERTA_TASKS, ks or ROBERTA_KS, modes, seeds or ROBERTA_SEEDS):
            if mode not in ROBERTA_GRID:
                raise ValueError(f"mode {mode!r} is not in the paper's RoBERTa grid: {sorted(ROBERTA_GRID)}")
            for lr, bs in _lrs_bss(ROBERTA_GRID[mode], grid_search, task, k):
                runs.append(_roberta_run(task, k, mode, seed, lr, bs, model))
    else:
        raise ValueError(f"--model_family must be roberta or opt, got {family!r}")
    return runs


def with_output(run: Run, output_dir: str) -> dict:
    """The run's full flag dict with its deterministic --output_dir."""
    return {**run.args, "output_dir": os.path.join(output_dir, run.rel_dir)}

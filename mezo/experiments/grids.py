"""The paper's hyperparameter grids, expanded into runs with readable output folders.

Every value comes from mezo/hparams.py (the one table, with its sources); this module only
expands it: the (task, k, mode, seed) product, the learning-rate and batch-size grid of each mode
(or its single run without --grid_search), and a folder name per run.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from itertools import product

from mezo import hparams

DEFAULT_MODES = {"roberta": ["mezo"], "opt": ["mezo", "mezo_prefix", "mezo_lora"]}
MODE_FLAGS = {  # how a mode is asked of the training script (its numbers come from the table)
    "mezo": {"trainer": "mezo"},
    "mezo_prefix": {"trainer": "mezo", "prefix_tuning": True},
    "mezo_lora": {"trainer": "mezo", "use_lora": True},
    "ft": {"trainer": "ft", "optimizer": "adam"},
    "ft_prefix": {"trainer": "ft", "optimizer": "adam", "prefix_tuning": True},
    "ft_lora": {"trainer": "ft", "optimizer": "adam", "use_lora": True},
    "zero_shot": {"zero_shot": True},
    "icl": {"icl": True, "num_demos": hparams.ICL_DEMOS},
    "linear_probe": {"trainer": "linear_probe"},
}
PEFT_KEYS = ("num_prefix", "lora_r", "lora_alpha")


def fmt(x: float) -> str:
    """1e-06 -> '1e-6', 5e-05 -> '5e-5', 0.1 -> '1e-1' (folder names and tags)."""
    s = f"{x:.0e}" if float(f"{x:.0e}") == x else f"{x:g}"
    return re.sub(r"e([+-])0*(\d)", lambda m: "e" + ("-" if m.group(1) == "-" else "") + m.group(2), s)


def _whole(x: float):
    """0.0 -> 0: the OPT runs spell a whole weight decay without '.0' (--weight_decay 0)."""
    return int(x) if x == int(x) else x


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
        return f"demos{hparams.ICL_DEMOS}_seed{seed}"
    if lr is None:
        return f"seed{seed}"
    parts = [f"lr{fmt(lr)}"]
    if eps is not None:
        parts.append(f"eps{fmt(eps)}")
    if bs is not None and bs != default_bs:
        parts.append(f"bs{bs}")
    return "_".join(parts + [f"seed{seed}"])


def _mode_flags(mode: str, run: dict) -> dict:
    return {**MODE_FLAGS[mode], **{k: run[k] for k in PEFT_KEYS if k in run}}


def _steps(run: dict) -> dict:
    """Steps, evaluation interval (a checkpoint at every evaluation) and schedule of a run."""
    return dict(max_steps=run["max_steps"], eval_steps=run["eval_steps"], save_steps=run["eval_steps"],
                lr_scheduler_type=run["lr_scheduler_type"])


def _opt_run(task, mode, seed, lr, bs, model) -> Run:
    run = hparams.OPT_MODES[mode].run
    num_train = {"zero_shot": 0, "icl": hparams.ICL_DEMOS}.get(mode, hparams.OPT_DATA["num_train"])
    args = {"model_name": model, "model_family": "opt", "task_name": task, **_mode_flags(mode, run),
            "num_train": num_train, "num_dev": hparams.opt_num_dev(task),
            "num_eval": hparams.OPT_DATA["num_eval"], "train_set_seed": seed, "dtype": hparams.OPT_DTYPE}
    if mode == "ft":
        micro = hparams.OPT_FT_MICRO_BATCH.get(task, bs)
        args["batch_size"] = micro
        if micro != bs:
            args["gradient_accumulation_steps"] = bs // micro
        args.update(learning_rate=fmt(lr), **_steps(run), weight_decay=_whole(run["weight_decay"]))
    elif run:
        args.update(batch_size=bs, learning_rate=fmt(lr), zo_eps=fmt(run["zo_eps"]), **_steps(run),
                    weight_decay=_whole(run["weight_decay"]), numerics=hparams.OPT_NUMERICS)
    return Run("opt", task, mode, seed, args, tag=_tag(mode, lr, run.get("zo_eps"), None, seed, None))


def _roberta_run(task, k, mode, seed, lr, bs, model) -> Run:
    run = hparams.ROBERTA_MODES[mode].run
    args = {"model_name": model, "model_family": "roberta", "task_name": task, **_mode_flags(mode, run),
            "k": k, "data_seed": seed, "seed": seed}
    weight_decay = run.get("weight_decay", hparams.DEFAULT_WEIGHT_DECAY)
    if mode.startswith("mezo"):
        args.update(batch_size=bs, learning_rate=fmt(lr), zo_eps=fmt(run["zo_eps"]), weight_decay=weight_decay,
                    **_steps(run))
    elif mode.startswith("ft"):
        args.update(batch_size=bs, learning_rate=fmt(lr), weight_decay=weight_decay, **_steps(run))
    return Run("roberta", task, mode, seed, args, k=k,
               tag=_tag(mode, lr, run.get("zo_eps"), bs, seed, run.get("batch_size")))


def _lrs_bss(m: hparams.Mode, grid_search: bool, task: str, k: int | None):
    """(learning rate, batch size) of each run of a mode: the grid, or the single run."""
    if not m.lrs:
        return [(None, None)]
    if not grid_search:
        return [(m.run["learning_rate"], m.run["batch_size"])]
    lrs = m.lrs_generation if (m.lrs_generation and task in hparams.OPT_GENERATION) else m.lrs
    return list(product(lrs, m.batch_grid(k)))


def expand(family: str, *, grid_search: bool = False, model_name: str | None = None,
           tasks: list[str] | None = None, modes: list[str] | None = None,
           seeds: list[int] | None = None, ks: list[int] | None = None) -> list[Run]:
    """Every run of the paper's grid for one model family, in a fixed order."""
    hparams.check_family(family)
    model = model_name or hparams.MODELS[family]
    modes = modes or DEFAULT_MODES[family]
    table = hparams.MODES[family]
    for mode in modes:
        if mode not in table:
            name = "OPT" if family == "opt" else "RoBERTa"
            raise ValueError(f"mode {mode!r} is not in the paper's {name} grid: {sorted(table)}")
    runs: list[Run] = []
    if family == "opt":
        for task, mode, seed in product(tasks or hparams.OPT_TASKS, modes, seeds or hparams.OPT_SEEDS):
            for lr, bs in _lrs_bss(table[mode], grid_search, task, None):
                runs.append(_opt_run(task, mode, seed, lr, bs, model))
    else:
        for task, k, mode, seed in product(tasks or hparams.ROBERTA_TASKS, ks or hparams.ROBERTA_KS, modes,
                                           seeds or hparams.ROBERTA_SEEDS):
            for lr, bs in _lrs_bss(table[mode], grid_search, task, k):
                runs.append(_roberta_run(task, k, mode, seed, lr, bs, model))
    return runs


def with_output(run: Run, output_dir: str) -> dict:
    """The run's full flag dict with its deterministic --output_dir."""
    return {**run.args, "output_dir": os.path.join(output_dir, run.rel_dir)}

"""The paper's hyper-parameters, in one table: `--paper_hparams` (mezo/config.py), the grids
(mezo/experiments/grids.py) and the presets (configs/*.yaml, through `paper_hparams: true`) read it.

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
  * Single runs (--paper_hparams, the presets, the grids without --grid_search) are the reference
    READMEs' example commands: large_models/README.md (OPT MeZO 1e-7, prefix 1e-3, LoRA 5e-5) and
    medium_models/README.md (RoBERTa MeZO 1e-6, prefix 1e-2, LoRA 1e-4; FT 1e-5 bs 8, FT prefix
    1e-2, FT LoRA 1e-4); steps, evaluation interval and schedule from medium_models/mezo.sh
    (100k, 10k, constant) and large_models/mezo.sh (20k, 4000, constant).

Plain values only (no torch, no project imports), so that anything may import this module.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mode:
    """One training mode of one model family: its single run and the grid around it."""
    run: dict                        # flag -> value of the single run; what --paper_hparams fills
    lrs: tuple = ()                  # the learning-rate grid; () for the baselines (no training)
    lrs_generation: tuple = ()       # OPT: the grid of the generation tasks (SQuAD, DROP)
    batch_sizes: tuple | dict = ()   # the batch-size grid, per k for RoBERTa FT; () = the run's only

    def batch_grid(self, k: int | None = None) -> tuple:
        if isinstance(self.batch_sizes, dict):
            return self.batch_sizes[k]
        return self.batch_sizes or (self.run["batch_size"],)


PREFIX = dict(num_prefix=5)                 # Tables 15/16: 5 prefix tokens
LORA = dict(lora_r=8, lora_alpha=16)        # Tables 15/16: (r, alpha) = (8, 16)

# ---------------------------------------------------------------- RoBERTa-large (Table 15)
ROBERTA_MODEL = "roberta-large"
ROBERTA_TASKS = ("SST-2", "SST-5", "SNLI", "MNLI", "TREC", "RTE")
ROBERTA_KS = (16, 512)
ROBERTA_SEEDS = (13, 21, 42, 87, 100)
ROBERTA_DATA = dict(k=16, data_seed=42, num_eval=1000)
_ROBERTA_MEZO_STEPS = dict(max_steps=100000, eval_steps=10000, lr_scheduler_type="constant")
_ROBERTA_FT_STEPS = dict(max_steps=1000, eval_steps=100, lr_scheduler_type="linear")
ROBERTA_MODES = {
    "mezo": Mode(dict(batch_size=64, learning_rate=1e-6, zo_eps=1e-3, weight_decay=0.0, **_ROBERTA_MEZO_STEPS),
                 lrs=(1e-7, 1e-6, 1e-5)),
    "mezo_prefix": Mode(dict(batch_size=64, learning_rate=1e-2, zo_eps=1e-1, weight_decay=0.0,
                             **_ROBERTA_MEZO_STEPS, **PREFIX),
                        lrs=(1e-2, 5e-3, 1e-3)),
    "mezo_lora": Mode(dict(batch_size=64, learning_rate=1e-4, zo_eps=1e-3, weight_decay=0.1,
                           **_ROBERTA_MEZO_STEPS, **LORA),
                      lrs=(1e-5, 5e-5, 1e-4)),
    "ft": Mode(dict(batch_size=8, learning_rate=1e-5, weight_decay=0.0, **_ROBERTA_FT_STEPS),
               lrs=(1e-5, 3e-5, 5e-5), batch_sizes={16: (2, 4, 8), 512: (8, 16, 32)}),
    # Table 15 gives FT (prefix) and FT (LoRA) no weight decay: --paper_hparams leaves the flag alone
    "ft_prefix": Mode(dict(batch_size=8, learning_rate=1e-2, **_ROBERTA_FT_STEPS, **PREFIX),
                      lrs=(1e-2, 3e-2, 5e-2), batch_sizes=(8, 16, 32)),
    "ft_lora": Mode(dict(batch_size=8, learning_rate=1e-4, **_ROBERTA_FT_STEPS, **LORA),
                    lrs=(1e-4, 3e-4, 5e-4), batch_sizes=(4, 8, 16)),
    "zero_shot": Mode({}),
    "linear_probe": Mode({}),
}
# what the grid runs pass where the table has no weight decay (the flag's default)
DEFAULT_WEIGHT_DECAY = 0.0

# ---------------------------------------------------------------- OPT (Table 16)
OPT_MODEL = "facebook/opt-13b"
OPT_TASKS = ("SST2", "RTE", "CB", "BoolQ", "WSC", "WiC", "MultiRC", "Copa", "ReCoRD", "SQuAD", "DROP")
OPT_GENERATION = ("SQuAD", "DROP")
OPT_SEEDS = (0,)
OPT_DATA = dict(num_train=1000, num_eval=1000)
OPT_DEV = 500
OPT_SMALL_DEV = {"CB": 100, "Copa": 100}   # large_models/mezo.sh: tasks with < 1000 training examples
OPT_DTYPE = "fp16"                          # large_models/*.sh: --load_float16
# large_models/mezo.sh: the fp16 weights perturbed and updated in place (trainer.py zo_update);
# --paper_hparams resolves --numerics auto to the same (mezo/config.py)
OPT_NUMERICS = "reference"
# large_models/finetune.sh: the FT micro-batch that fits an 80GB A100 (gradient accumulation to 8)
OPT_FT_MICRO_BATCH = {"MultiRC": 2, "ReCoRD": 2, "DROP": 1}
ICL_DEMOS = 32                              # large_models/icl.sh: demonstrations in context
_OPT_MEZO_STEPS = dict(max_steps=20000, eval_steps=4000, lr_scheduler_type="constant")
OPT_MODES = {
    "mezo": Mode(dict(batch_size=16, learning_rate=1e-7, zo_eps=1e-3, weight_decay=0.0, **_OPT_MEZO_STEPS),
                 lrs=(1e-6, 1e-7), lrs_generation=(1e-6, 5e-7, 1e-7)),
    "mezo_prefix": Mode(dict(batch_size=16, learning_rate=1e-3, zo_eps=1e-1, weight_decay=0.0,
                             **_OPT_MEZO_STEPS, **PREFIX),
                        lrs=(1e-2, 1e-3), lrs_generation=(5e-2, 1e-2, 5e-3)),
    "mezo_lora": Mode(dict(batch_size=16, learning_rate=5e-5, zo_eps=1e-2, weight_decay=0.0,
                           **_OPT_MEZO_STEPS, **LORA),
                      lrs=(1e-4, 5e-5), lrs_generation=(1e-4, 5e-5, 1e-5)),
    "ft": Mode(dict(batch_size=8, learning_rate=1e-5, weight_decay=0.0, max_steps=625, eval_steps=125,
                    lr_scheduler_type="linear"),
               lrs=(1e-5, 5e-5, 8e-5)),
    "zero_shot": Mode({}),
    "icl": Mode({}),
}

MODELS = {"roberta": ROBERTA_MODEL, "opt": OPT_MODEL}
MODES = {"roberta": ROBERTA_MODES, "opt": OPT_MODES}
DATA = {"roberta": ROBERTA_DATA, "opt": OPT_DATA}


def check_family(family: str) -> None:
    if family not in MODES:
        raise ValueError(f"--model_family must be roberta or opt, got {family!r}")


def opt_num_dev(task: str) -> int:
    """The OPT dev set size of a task (the tasks in mezo/tasks say the same; a test checks)."""
    return OPT_SMALL_DEV.get(task, OPT_DEV)


def paper_defaults(family: str, mode: str, num_dev: int | None = None) -> dict:
    """What --paper_hparams fills for `family` (roberta | opt) and `mode` (mezo, mezo_prefix,
    mezo_lora, ft, ft_prefix, ft_lora; any other mode gets the data sizes only): the mode's
    single run and the family's data sizes, plus num_dev for OPT (the task's dev size)."""
    check_family(family)
    mode_entry = MODES[family].get(mode)
    values = dict(mode_entry.run) if mode_entry else {}
    values.update(DATA[family])
    if family == "opt" and num_dev is not None:
        values["num_dev"] = num_dev
    return values

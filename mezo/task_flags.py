"""Flags of the task layer (issue 3): model family, k-shot data, zero-shot / ICL baselines,
--non_diff, generation length and --paper_hparams; their validation and the paper defaults.

Model family: roberta -> masked-LM tasks (LM-BFF prompts, AutoModelForMaskedLM); opt / llama
-> causal-LM tasks. "auto" reads model_type from a local model folder's config.json (fast, no
model load), else guesses from the name; the default model (SmolLM2, GGUF) is llama.
"""
from __future__ import annotations

import argparse
import json
import os

FAMILIES = ("auto", "opt", "llama", "roberta")
KS = (16, 512)
DATA_SEEDS = (13, 21, 42, 87, 100)
MLM_MODEL_TYPES = {"roberta", "xlm-roberta", "bert", "deberta", "deberta-v2", "distilbert", "electra"}

# --paper_hparams (Malladi et al. 2023, Appendix E.3; mezo/experiments/grids.py holds the grids).
# Single-run values are the reference READMEs' example commands.
PAPER = {
    "roberta": {  # Table 15; medium_models/mezo.sh: 100k steps, eval every 10k, constant lr
        "mezo": dict(batch_size=64, learning_rate=1e-6, zo_eps=1e-3, weight_decay=0.0, max_steps=100000,
                     eval_steps=10000, lr_scheduler_type="constant"),
        "mezo_prefix": dict(batch_size=64, learning_rate=1e-2, zo_eps=1e-1, weight_decay=0.0, max_steps=100000,
                            eval_steps=10000, lr_scheduler_type="constant", num_prefix=5),
        "mezo_lora": dict(batch_size=64, learning_rate=1e-4, zo_eps=1e-3, weight_decay=0.1, max_steps=100000,
                          eval_steps=10000, lr_scheduler_type="constant", lora_r=8, lora_alpha=16),
        "ft": dict(batch_size=8, learning_rate=1e-5, weight_decay=0.0, max_steps=1000, eval_steps=100,
                   lr_scheduler_type="linear"),
        "ft_prefix": dict(batch_size=8, learning_rate=1e-2, max_steps=1000, eval_steps=100,
                          lr_scheduler_type="linear", num_prefix=5),
        "ft_lora": dict(batch_size=8, learning_rate=1e-4, max_steps=1000, eval_steps=100,
                        lr_scheduler_type="linear", lora_r=8, lora_alpha=16),
        "_data": dict(k=16, data_seed=42, num_eval=1000),
    },
    "opt": {  # Table 16; large_models/mezo.sh: 20k steps, eval every 4000, constant lr
        "mezo": dict(batch_size=16, learning_rate=1e-7, zo_eps=1e-3, weight_decay=0.0, max_steps=20000,
                     eval_steps=4000, lr_scheduler_type="constant"),
        "mezo_prefix": dict(batch_size=16, learning_rate=1e-3, zo_eps=1e-1, weight_decay=0.0, max_steps=20000,
                            eval_steps=4000, lr_scheduler_type="constant", num_prefix=5),
        "mezo_lora": dict(batch_size=16, learning_rate=5e-5, zo_eps=1e-2, weight_decay=0.0, max_steps=20000,
                          eval_steps=4000, lr_scheduler_type="constant", lora_r=8, lora_alpha=16),
        "ft": dict(batch_size=8, learning_rate=1e-5, weight_decay=0.0, max_steps=625, eval_steps=125,
                   lr_scheduler_type="linear"),
        "_data": dict(num_train=1000, num_eval=1000),   # num_dev: the task's (500; CB, Copa 100)
    },
}


def add_args(p: argparse.ArgumentParser) -> None:
    # ------------------------------------------------------------ tasks, baselines, model families
    g = p.add_argument_group("tasks, baselines and model families")
    a = g.add_argument
    a("--model_family", choices=FAMILIES, default="auto",
      help="roberta: masked-LM tasks (LM-BFF prompts); opt / llama: causal-LM tasks; auto: from the model config")
    a("--k", type=int, default=None, help="roberta: examples per class for train and for dev (16 or 512; default 16)")
    a("--data_seed", type=int, default=None, help="roberta: k-shot sampling seed (13, 21, 42, 87, 100; default 42)")
    a("--zero_shot", action="store_true", help="evaluate the model as loaded (no training), write the logs, exit")
    a("--icl", action="store_true", help="in-context learning baseline: evaluate with --num_demos train demos, exit")
    a("--num_demos", type=int, default=32, help="--icl: demonstrations per test example (reference: 32)")
    a("--non_diff", action="store_true", help="MeZO on minus the task metric (accuracy / F1) of the batch's predictions")
    a("--max_new_tokens", type=int, default=50, help="generation tasks (SQuAD, DROP): greedy tokens, stop at newline")
    a("--paper_hparams", action="store_true",
      help="fill the paper's defaults for the family and mode (batch, lr, eps, steps, eval interval, schedule, "
           "data sizes, LoRA r/alpha) where the flag is not given")


def explicit_dests(build_parser, argv) -> set[str]:
    """The dests the command line sets (a parser whose defaults are all SUPPRESS)."""
    p = build_parser()
    for action in p._actions:
        action.default = argparse.SUPPRESS
    return set(vars(p.parse_known_args(argv)[0]))


def infer_family(model_name: str, gguf_file: str | None) -> str:
    """opt | llama | roberta | causal, without loading the model."""
    from mezo import models
    path, gguf = models.resolve(model_name, gguf_file)
    if gguf:
        return "llama"
    cfg = os.path.join(os.path.expanduser(path), "config.json")
    model_type = None
    if os.path.isfile(cfg):
        try:
            with open(cfg, encoding="utf-8") as f:
                model_type = json.load(f).get("model_type")
        except (OSError, ValueError):
            model_type = None
    name = (model_type or os.path.basename(path.rstrip("/"))).lower()
    if model_type in MLM_MODEL_TYPES or (model_type is None and "roberta" in name):
        return "roberta"
    if name.startswith("opt") or "/opt-" in path.lower():
        return "opt"
    if "llama" in name:
        return "llama"
    return "causal"


def resolve_family(args, fail) -> None:
    """args.model_family concrete; args.task_family: "mlm" or "causal"."""
    if args.model_family == "auto":
        args.model_family = infer_family(args.model_name, args.gguf_file)
    args.task_family = "mlm" if args.model_family == "roberta" else "causal"


def fill_paper_hparams(args, explicit: set[str], task, mode: str) -> dict:
    """Set the paper's values where the flag was not given; return what was filled."""
    table = PAPER["roberta" if args.task_family == "mlm" else "opt"]
    values = dict(table.get(mode, {}))
    values.update(table["_data"])
    if args.task_family != "mlm":
        values["num_dev"] = task.num_dev
    filled = {}
    for k, v in values.items():
        if k in explicit or not hasattr(args, k):
            continue
        if getattr(args, k) != v:
            filled[k] = v
        setattr(args, k, v)
    return filled


def check(args, fail) -> None:
    """Validation of the task-layer flags (after the family is known)."""
    mlm = args.task_family == "mlm"
    if args.k is not None:
        if not mlm:
            fail(f"--k {args.k} applies to masked-LM tasks (--model_family roberta), not {args.model_family}")
        if args.k not in KS:
            fail(f"--k must be one of {', '.join(map(str, KS))} (got {args.k})")
    if args.data_seed is not None:
        if not mlm:
            fail(f"--data_seed {args.data_seed} applies to masked-LM tasks (--model_family roberta)")
        if args.data_seed not in DATA_SEEDS:
            fail(f"--data_seed must be one of {', '.join(map(str, DATA_SEEDS))} (got {args.data_seed})")
    if mlm:
        args.k = 16 if args.k is None else args.k
        args.data_seed = 42 if args.data_seed is None else args.data_seed
    if args.zero_shot and args.icl:
        fail("--zero_shot and --icl are two different baselines: pass one")
    if args.icl and mlm:
        fail("--icl is the causal-LM baseline (MeZO Table 1); masked-LM tasks have --zero_shot")
    if args.num_demos < 1:
        fail(f"--num_demos must be >= 1 (got {args.num_demos})")
    if args.max_new_tokens < 1:
        fail(f"--max_new_tokens must be >= 1 (got {args.max_new_tokens})")
    if args.non_diff and args.trainer != "mezo":
        fail("--non_diff trains MeZO on the metric: it needs --trainer mezo")

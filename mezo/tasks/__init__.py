"""Task registry: --task_name -> Task class. Add a task by adding it to a tuple here.

TASKS: causal-LM tasks (MeZO large models). MLM_TASKS: RoBERTa / LM-BFF tasks (MeZO medium
models), reached with get_task(name, family="mlm"). Names match case-, "-" and "_"-blind.
"""
from __future__ import annotations

from mezo.tasks.base import Sample, Splits, Task, find_data_dir, make_splits  # noqa: F401
from mezo.tasks.causal import CB, DROP, RTE, WSC, BoolQ, Copa, MultiRC, ReCoRD, SQuAD, WiC
from mezo.tasks.glue import SST2
from mezo.tasks.icl import demo_sets, icl_prompt, left_truncate, sample_demos  # noqa: F401
from mezo.tasks.mlm import (MASK, MNLIMLM, RTEMLM, SNLIMLM, SST2MLM, SST5MLM, TRECMLM,  # noqa: F401
                            kshot_splits, kshot_test, load_kshot)


def _key(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")


TASKS: dict[str, type[Task]] = {
    _key(cls.name): cls for cls in (SST2, RTE, CB, BoolQ, WSC, WiC, MultiRC, Copa, ReCoRD, SQuAD, DROP)}
MLM_TASKS: dict[str, type[Task]] = {
    _key(cls.name): cls for cls in (SST2MLM, SST5MLM, TRECMLM, MNLIMLM, SNLIMLM, RTEMLM)}
FAMILIES = {"causal": TASKS, "mlm": MLM_TASKS, "roberta": MLM_TASKS}

# (dataset, config) of the hub -> causal task, for --dataset/--dataset_config without --task_name
BY_DATASET = {(cls.hf_path, cls.hf_config): key for key, cls in TASKS.items()}


def task_names(family: str = "causal") -> list[str]:
    return sorted(cls.name for cls in FAMILIES[family].values())


def get_task(name: str, family: str = "causal", **kwargs) -> Task:
    registry = FAMILIES[family]
    key = _key(name)
    if key not in registry:
        raise KeyError(f"unknown {family} task {name!r}; valid: {', '.join(task_names(family))}")
    return registry[key](**kwargs)

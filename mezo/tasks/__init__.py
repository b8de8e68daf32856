"""Task registry: --task_name -> Task class. Add a task by adding a line here."""
from __future__ import annotations

from mezo.tasks.base import Sample, Splits, Task, make_splits  # noqa: F401
from mezo.tasks.glue import SST2

TASKS: dict[str, type[Task]] = {cls.name.lower(): cls for cls in (SST2,)}

# (dataset, config) of the hub -> task, for --dataset/--dataset_config without --task_name
BY_DATASET = {(cls.hf_path, cls.hf_config): key for key, cls in TASKS.items()}


def task_names() -> list[str]:
    return sorted(cls.name for cls in TASKS.values())


def get_task(name: str, **kwargs) -> Task:
    key = name.lower().replace("-", "").replace("_", "")
    if key not in TASKS:
        raise KeyError(f"unknown task {name!r}; valid: {', '.join(task_names())}")
    return TASKS[key](**kwargs)

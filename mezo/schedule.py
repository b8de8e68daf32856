"""Pure functions of the step: the seeds of its directions and its learning rate. The trajectory
format, checkpoints and replay recompute them from the step number, so their arithmetic is part
of the file formats: change it and old compact trajectories replay to other weights."""
from __future__ import annotations


def step_seed(base: int, step: int, j: int = 0, n: int = 1) -> int:
    """The seed of direction j at `step`: a pure function of (--seed, step), so a run can be
    replayed or resumed from the step number alone."""
    return (int(base) << 32) | (step * n + j)


def lr_at(schedule: str, lr: float, max_steps: int, step: int) -> float:
    """MeZO's learning rate at `step` (0-based): "constant", or "linear" decay to 0 at max_steps."""
    if schedule == "linear":
        return lr * max(0.0, 1.0 - step / max_steps)
    return lr


def warmup_lr_at(schedule: str, lr: float, max_steps: int, warmup: int, step: int) -> float:
    """The backprop baseline's: transformers' get_linear_schedule_with_warmup /
    get_constant_schedule_with_warmup: lr * step / warmup during warm-up, then constant or
    linear decay to 0 at max_steps."""
    if step < warmup:
        return lr * step / max(1, warmup)
    if schedule == "linear":
        return lr * max(0.0, (max_steps - step) / max(1, max_steps - warmup))
    return lr

"""Turn {flag: value} into the training script's command line (and back to a string)."""
from __future__ import annotations

import shlex
import sys

SCRIPT = "accelerate_mezo.py"


def flag_args(args: dict) -> list[str]:
    """{flag: value} -> ["--flag", "value", ...]. True -> bare flag; False/None -> omitted;
    a list -> its items after the flag."""
    out: list[str] = []
    for key, value in args.items():
        if value is None or value is False:
            continue
        out.append(f"--{key}")
        if value is True:
            continue
        if isinstance(value, (list, tuple)):
            out.extend(str(v) for v in value)
        else:
            out.append(str(value))
    return out


def launcher(nproc: int = 1, *, python: str | None = None) -> list[str]:
    """`python` for one process, torchrun for more: `python -m torch.distributed.run
    --nproc_per_node N`, with this interpreter (a `torchrun` first on PATH may be another
    environment's)."""
    if nproc and nproc > 1:
        return [python or sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc)]
    return [python or sys.executable]


def training_command(args: dict, nproc: int = 1, *, script: str = SCRIPT, python: str | None = None) -> list[str]:
    return launcher(nproc, python=python) + [script] + flag_args(args)


def to_string(cmd: list[str]) -> str:
    return shlex.join(cmd)

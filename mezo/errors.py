"""Exit codes and the errors that end a run, shared by every entry point (imports nothing heavy,
so the SLURM scripts and the tools can read the codes too).

    0   done
    2   bad input: one line naming the flag or file and what would be valid, before any heavy work
    3   a non-finite loss or projected gradient (without --skip_nonfinite)
    75  preempted (SIGTERM / SIGUSR1): checkpointed, rerun with --resume_from_checkpoint auto
"""
from __future__ import annotations

import sys
from typing import NoReturn

EXIT_BAD_INPUT = 2
EXIT_NONFINITE = 3
EXIT_PREEMPTED = 75          # EX_TEMPFAIL: "try again" (requeue and resume)
PROG = "accelerate_mezo.py"


class BadInput(ValueError):
    """A flag, file or setting that cannot work; the message names it."""


class StopRun(Exception):
    """Ends a run that has started; `code` is the process's exit status, `status` the one written
    to training_metrics.json."""
    code = 1
    status = "failed"


class Preempted(StopRun):
    code = EXIT_PREEMPTED
    status = "preempted"


class NonFinite(StopRun):
    code = EXIT_NONFINITE


class CheckpointError(StopRun):
    """A checkpoint that passed the checks before loading but cannot be loaded into this model."""
    code = EXIT_BAD_INPUT


def bad_input(msg: str, prog: str = PROG) -> int:
    """Print the bad-input line; returns its exit code (2)."""
    print(f"{prog}: error: {msg}", file=sys.stderr, flush=True)
    return EXIT_BAD_INPUT


def die(msg: str, prog: str = PROG) -> NoReturn:
    """The bad-input line and exit 2."""
    sys.exit(bad_input(msg, prog))


def report(e: StopRun, main: bool, prog: str = PROG) -> int:
    """Print why the run stopped (a preemption once, from rank 0) and return its exit code."""
    if main or not isinstance(e, Preempted):
        print(f"{prog}: {'' if isinstance(e, Preempted) else 'error: '}{e}", file=sys.stderr, flush=True)
    return e.code

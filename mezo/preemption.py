"""Preemption: SIGTERM / SIGUSR1 (SLURM's warning before a kill) set a flag; at the next step
boundary all ranks agree (one all-reduce), the trainer checkpoints and exits EXIT_PREEMPTED (75)."""
from __future__ import annotations

import os
import signal
import threading

import torch

from mezo import distributed as D

SIGNALS = ("SIGTERM", "SIGUSR1")
_received = {"signal": None}


def _on_signal(signum, frame):
    _received["signal"] = signal.Signals(signum).name
    try:
        os.write(2, f"[rank {D.rank()}] {signal.Signals(signum).name}: checkpointing at the next step boundary\n".encode())
    except OSError:
        pass


def install() -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    for name in SIGNALS:
        signal.signal(getattr(signal, name), _on_signal)


def signal_name() -> str | None:
    """The signal this rank received, if any."""
    return _received["signal"]


def requested() -> bool:
    """True on every rank when any rank got a preemption signal (one all-reduce)."""
    flag = torch.tensor([1.0 if _received["signal"] else 0.0])
    return bool(D.all_reduce_sum(flag)[0] > 0)

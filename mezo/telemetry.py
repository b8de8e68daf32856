"""Everything a run writes: atomic JSON files, the metrics log, the memory log, training.log."""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import torch

from mezo.errors import BadInput

log = logging.getLogger("mezo")


def write_json(path: str, obj) -> None:
    """Write then rename: a reader (or a kill) never sees a half-written file."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".part")  # never matches *.json
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def check_writable(flag: str, folder: str) -> None:
    """Create `folder` if needed and write a file in it; BadInput naming `flag` when that fails."""
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".write-test-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise BadInput(f"{flag} {folder}: not writable ({e.strerror or e})") from None


def setup_logging(output_dir: str | None, main: bool) -> None:
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    log.setLevel(logging.INFO if main else logging.WARNING)
    log.handlers.clear()
    log.propagate = False
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(fmt)
    log.addHandler(h)
    if main and output_dir:
        fh = logging.FileHandler(os.path.join(output_dir, "training.log"))
        fh.setFormatter(fmt)
        log.addHandler(fh)


class Metrics:
    """training_metrics.json: per-step records, per-eval records, zero-shot and final results."""

    def __init__(self, path: str | None, every: int = 10):
        self.path, self.every = path, every
        self.data = {"status": "running", "steps": [], "evals": [], "zero_shot": None, "final": None,
                     "total_time_s": None, "mean_step_time_s": None}
        self.t0 = time.time()

    def step(self, rec: dict) -> None:
        self.data["steps"].append(rec)
        if len(self.data["steps"]) % self.every == 0:
            self.save()

    def eval(self, rec: dict) -> None:
        self.data["evals"].append(rec)
        self.save()

    def restore(self, saved: dict, resumed: dict, skipped: int) -> None:
        """Continue a run: the records a checkpoint saved, and one more entry in "resumed"."""
        d = self.data
        for k in ("steps", "evals", "zero_shot"):
            if saved.get(k) is not None:
                d[k] = saved[k]
        d["resumed"] = list(saved.get("resumed") or []) + [resumed]
        d["skipped_nonfinite"] = skipped

    def restore_replayed(self, entries) -> None:
        """Per-step records of steps replayed from a trajectory (mezo.trajectory.Entry): the
        interrupted run's training_metrics.json has them when it was written after them (every
        --log_steps), else what the trajectory knows; the evaluations it logged in that span."""
        if not self.path or not entries:
            return
        old_steps, old_evals = {}, []
        try:
            with open(self.path) as f:
                old = json.load(f)
            old_steps = {r["step"]: r for r in old.get("steps") or [] if isinstance(r, dict) and "step" in r}
            old_evals = [r for r in old.get("evals") or [] if isinstance(r, dict) and "step" in r]
        except (OSError, ValueError, TypeError, AttributeError):
            pass
        d = self.data
        for e in entries:
            rec = old_steps.get(e.step)
            if rec is None or rec.get("seeds") not in (None, e.seeds):
                rec = {"step": e.step, "projected_grad": sum(e.grads) / len(e.grads) if e.grads else None,
                       "lr": e.lr, "step_time_s": 0.0, "seeds": e.seeds, "replayed": True}
            d["steps"].append(rec)
        lo, hi = entries[0].step, entries[-1].step
        d["evals"] = [r for r in d.get("evals") or [] if r["step"] < lo] + [r for r in old_evals if lo <= r["step"] <= hi]

    def save(self, status: str | None = None) -> None:
        if status:
            self.data["status"] = status
        steps = self.data["steps"]
        self.data["total_time_s"] = time.time() - self.t0
        if steps:
            self.data["mean_step_time_s"] = sum(s["step_time_s"] for s in steps) / len(steps)
        if self.path:
            write_json(self.path, self.data)


def _gpu_used_mib(index: int) -> float | None:
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                              f"--id={index}"], capture_output=True, text=True, timeout=5).stdout
        return float(out.strip().splitlines()[0])
    except Exception:
        return None


class MemoryLogger:
    """Samples memory every `interval` s in a thread: torch allocated/reserved and nvidia-smi on
    GPU, process RSS on CPU (and always). Writes memory_log.json on every save and at stop."""

    def __init__(self, path: str, device: torch.device, interval: float = 10.0):
        import psutil
        self.proc = psutil.Process()
        self.path, self.device, self.interval = path, device, interval
        self.samples: list[dict] = []
        self.t0 = time.time()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> dict:
        cuda = self.device.type == "cuda"
        rec = {"t_s": round(time.time() - self.t0, 3), "rss_bytes": self.proc.memory_info().rss,
               "allocated_bytes": torch.cuda.memory_allocated(self.device) if cuda else None,
               "reserved_bytes": torch.cuda.memory_reserved(self.device) if cuda else None,
               "max_allocated_bytes": torch.cuda.max_memory_allocated(self.device) if cuda else None,
               "gpu_used_mib": _gpu_used_mib(self.device.index or 0) if cuda else None}
        self.samples.append(rec)
        return rec

    def _run(self):
        while not self._stop.wait(self.interval):
            self.sample()
            self.save()

    def start(self):
        self.sample()
        self._thread.start()
        return self

    def peak(self) -> dict:
        keys = ("rss_bytes", "allocated_bytes", "reserved_bytes", "max_allocated_bytes", "gpu_used_mib")
        return {k: max((s[k] for s in self.samples if s[k] is not None), default=None) for k in keys}

    def save(self):
        write_json(self.path, {"device": str(self.device), "interval_s": self.interval,
                               "samples": list(self.samples), "peak": self.peak()})

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=30)
        self.sample()
        self.save()

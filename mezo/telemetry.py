"""Everything a run writes: atomic JSON files, the metrics log, the memory log, training.log."""
from __future__ import annotations

import errno
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import torch

from mezo.errors import BadInput

log = logging.getLogger("mezo")


def file_mode(directory: bool = False) -> int:
    """The mode open() would give a new file (0o666) or folder (0o777) under the process umask,
    read without changing it (os.umask sets it, which would race with the memory-log thread)."""
    mask = None
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    mask = int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    if mask is None:  # no procfs: the classic read, set and restore
        mask = os.umask(0o022)
        os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


def apply_umask(*paths: str) -> None:
    """Give files (and folders, recursively) the mode the umask allows: tempfile.mkstemp and
    safetensors create files 0600, which the rest of a group sharing a cluster cannot read."""
    fmode, dmode = file_mode(), file_mode(directory=True)
    for path in paths:
        if os.path.isdir(path):
            os.chmod(path, dmode)
            for root, dirs, files in os.walk(path):
                for d in dirs:
                    os.chmod(os.path.join(root, d), dmode)
                for f in files:
                    os.chmod(os.path.join(root, f), fmode)
        elif os.path.isfile(path):
            os.chmod(path, fmode)


def _nonfinite(x) -> bool:
    return isinstance(x, (float, np.floating)) and not math.isfinite(x)


def _why(x) -> str:
    return "nan" if x != x else "inf" if x > 0 else "-inf"


def strict(obj):
    """`obj` as strict JSON allows it: every NaN / inf becomes null, and the dict that held it
    gains "nonfinite": {key: "nan" | "inf" | "-inf"} (for a list: the reason per item, null for
    the finite ones), so a reader knows the null is a non-finite value and which."""
    if isinstance(obj, dict):
        out, why = {}, {}
        for k, v in obj.items():
            if k == "nonfinite":
                continue
            if _nonfinite(v):
                out[k], why[k] = None, _why(v)
            elif isinstance(v, (list, tuple)) and any(_nonfinite(x) for x in v):
                out[k] = [None if _nonfinite(x) else strict(x) for x in v]
                why[k] = [_why(x) if _nonfinite(x) else None for x in v]
            else:
                out[k] = strict(v)
        if why or obj.get("nonfinite"):
            out["nonfinite"] = {**(obj.get("nonfinite") or {}), **why}
        return out
    if isinstance(obj, (list, tuple)):
        return [None if _nonfinite(x) else strict(x) for x in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def write_json(path: str, obj) -> None:
    """Write then rename: a reader (or a kill) never sees a half-written file. Strict JSON (no
    NaN / Infinity: see strict), with the mode the umask gives (mkstemp alone makes it 0600)."""
    folder = os.path.dirname(os.path.abspath(path))
    text = json.dumps(strict(obj), indent=1, default=str, allow_nan=False)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".part")  # never matches *.json
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def update_json(path: str, fields: dict) -> None:
    """Add `fields` to the JSON object in `path` (written as write_json does)."""
    with open(path) as f:
        obj = json.load(f)
    obj.update(fields)
    write_json(path, obj)


def check_writable(flag: str, folder: str) -> None:
    """BadInput naming `flag` unless files can be written in `folder`. Nothing is created: an
    existing folder gets a test file (removed again); a missing one needs its nearest existing
    parent to be a writable folder (the run creates it once every check has passed)."""
    path = os.path.abspath(os.path.expanduser(folder))
    try:
        if os.path.isdir(path):
            fd, tmp = tempfile.mkstemp(dir=path, prefix=".write-test-")
            os.close(fd)
            os.unlink(tmp)
            return
        if os.path.exists(path):
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        parent = os.path.dirname(path)
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if not os.path.isdir(parent):
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        if not os.access(parent, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, f"{os.strerror(errno.EACCES)}: {parent}")
    except OSError as e:
        raise BadInput(f"{flag} {folder}: not writable ({e.strerror or e})") from None


# what a run writes into --output_dir: a folder holding any of these holds a run
RUN_FILES = ("run_config.json", "experiment_config.json", "training_metrics.json", "trajectory.jsonl",
             "memory_log.json", "training.log", "predictions.jsonl", "checkpoints", "model",
             "adapter_model.safetensors", "adapter_config.json", "prefix_model.safetensors", "prefix_config.json")


def run_files(folder: str) -> list[str]:
    """The files of a run that `folder` holds (RUN_FILES present), [] for a new or foreign folder."""
    if not os.path.isdir(folder):
        return []
    return [name for name in RUN_FILES if os.path.lexists(os.path.join(folder, name))]


def run_status(folder: str) -> str | None:
    """The status training_metrics.json in `folder` records, None when there is none (or unreadable)."""
    try:
        with open(os.path.join(folder, "training_metrics.json"), encoding="utf-8") as f:
            status = json.load(f).get("status")
    except (OSError, ValueError, AttributeError):
        return None
    return status if isinstance(status, str) else None


def clear_run(folder: str) -> list[str]:
    """Delete the run `folder` holds (--overwrite_output_dir): RUN_FILES, peft's README.md beside
    its adapters, leftovers of interrupted writes. Anything else stays (a SLURM job's own log).
    Returns what was deleted."""
    names = run_files(folder)
    if "adapter_config.json" in names and os.path.isfile(os.path.join(folder, "README.md")):
        names.append("README.md")
    names += [n for n in os.listdir(folder) if (n.startswith(".tmp-") and n.endswith(".part"))
              or n in ("trajectory.jsonl.tmp", "model.tmp")] if os.path.isdir(folder) else []
    for name in names:
        path = os.path.join(folder, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    return names


class _Held(logging.Handler):
    """Records logged before the output folder exists, written to training.log once it does."""

    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


def setup_logging(output_dir: str | None, main: bool) -> None:
    """Log to stderr, and (rank 0) to <output_dir>/training.log. Called with None first, while
    the run's checks still run and the folder must not be touched; what is logged until the
    call with the folder is then written to training.log too."""
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    held = next((h.records for h in log.handlers if isinstance(h, _Held)), [])
    log.setLevel(logging.INFO if main else logging.WARNING)
    log.handlers.clear()
    log.propagate = False
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(fmt)
    log.addHandler(h)
    if main and output_dir:
        fh = logging.FileHandler(os.path.join(output_dir, "training.log"))
        fh.setFormatter(fmt)
        for record in held:
            fh.handle(record)
        log.addHandler(fh)
    elif main:
        log.addHandler(_Held())


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
        self.info: dict = {}  # run facts written beside the samples (e.g. param_bytes, engine_state_bytes)
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
        write_json(self.path, {"device": str(self.device), "interval_s": self.interval, **self.info,
                               "samples": list(self.samples), "peak": self.peak()})

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=30)
        self.sample()
        self.save()

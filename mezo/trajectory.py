"""The MeZO trajectory: everything needed to rebuild the fine-tuned weights from the base model.

MeZO's update at step t is theta -= lr_t * (mean_j g_j z(s_j) + wd * theta) with z regenerated
from the step seed, so (seeds, projected gradients, lr, eps, wd) per step *is* the fine-tune.

`<output_dir>/trajectory.jsonl` (rank 0, one line per step, flushed + fsync'd, so a crash loses
at most the line being written):

    {"format": "mezo-trajectory", "version": 1, ...run settings...}        header (line 1)
    {"step": 1, "seeds": [...], "g": [...], "lr": 1e-05, "eps": 0.001, "n": 1, "wd": 0.0}
    {"step": 2, ..., "g": [null], "skipped": true}   a non-finite step skipped by --skip_nonfinite

`step` counts completed steps (1-based, as training_metrics.json); floats are written with
Python's repr, which round-trips exactly, so replay is bit-exact. The header's "generator" names
z's generator and its version (mezo.noise.GENERATORS); a header without it was written before
generators were versioned, with lowbias32-v1 (generator_of).

Compact binary form (`python -m mezo.trajectory compact IN OUT`): b"MEZOTRJ1", uint32 header
length, the JSON header, then per step n float32 coefficients g_j / n (NaN = skipped step).
Seeds and lr are pure functions of (seed, step) and of the header's schedule, eps and wd are
constants; float32 is lossless because the engine applies coefficients in float32.
"""
from __future__ import annotations

import json
import logging
import math
import os
import struct
import sys
from dataclasses import dataclass, field

import numpy as np

from mezo.errors import die
from mezo.schedule import lr_at, step_seed

FORMAT = "mezo-trajectory"
VERSION = 1
MAGIC = b"MEZOTRJ1"
FILENAME = "trajectory.jsonl"
log = logging.getLogger("mezo")


class TrajectoryError(ValueError):
    pass


@dataclass
class Entry:
    step: int                   # 1-based: the step that produced this update
    seeds: list[int]
    coefs: list[float]          # g_j / n, as the engine applies them
    lr: float
    eps: float
    wd: float
    skipped: bool = False
    grads: list[float] = field(default_factory=list)


def header(settings: dict, world_size: int, start_step: int = 0) -> dict:
    """Line 1: the run's settings (mezo.config.Config.settings(): model, dtype, numerics,
    MeZO and schedule settings, data sizes), what a replay or a resume must match."""
    return {"format": FORMAT, "version": VERSION, **settings, "world_size": world_size, "start_step": start_step}


def generator_of(header: dict) -> str:
    """The z generator a trajectory was written with (files from before versioning: the legacy one)."""
    from mezo.noise import LEGACY_GENERATOR  # here: mezo.noise loads torch, the compact tool needs none
    return header.get("generator", LEGACY_GENERATOR)


def record(step: int, seeds, grads, lr: float, eps: float, wd: float, skipped: bool = False) -> dict:
    """One step's line."""
    # strict JSON: a skipped step's non-finite g is written as null ("skipped" says why)
    rec = {"step": step, "seeds": [int(s) for s in seeds],
           "g": [float(g) if math.isfinite(g) else None for g in grads], "lr": float(lr),
           "eps": float(eps), "n": len(seeds), "wd": float(wd)}
    if skipped:
        rec["skipped"] = True
    return rec


def _dumps(obj) -> str:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False)


class Writer:
    """Appends one JSON line per step to the trajectory file, flushed and fsync'd."""

    def __init__(self, path: str, header: dict | None = None, keep: list[str] | None = None, fsync: bool = True):
        """header: start a new file; keep: raw lines (header first) to keep from an existing file
        (written atomically before appending resumes). fsync=False only for measuring sizes."""
        self.path, self.fsync = path, fsync
        if keep is not None or header is not None:
            lines = keep if keep is not None else [_dumps(header)]
            tmp = path + ".tmp"
            with open(tmp, "w") as f:
                f.write("".join(line.rstrip("\n") + "\n" for line in lines))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        self.f = open(path, "a")

    def write(self, step: int, seeds, grads, lr: float, eps: float, wd: float, skipped: bool = False):
        self.f.write(_dumps(record(step, seeds, grads, lr, eps, wd, skipped)) + "\n")
        self.f.flush()
        if self.fsync:
            os.fsync(self.f.fileno())

    def close(self):
        self.f.close()


def continue_log(path: str, src: str | None, start: int, fresh: dict) -> Writer:
    """The writer of a run that continues at step `start`: `path` keeps `src`'s header and its
    lines up to `start` (a compact source is rewritten as JSON lines), then appends. When `src`
    is None, or does not reach `start`, `path` starts anew with header `fresh` from `start` on
    (its steps then need the checkpoint they continue)."""
    if src is None:
        return Writer(path, header=fresh)
    keep = None
    try:
        h, entries, raw, _ = read(src, allow_truncated=True)
        first = int(h.get("start_step", 0))
        if first <= start <= first + len(entries):
            if raw:
                keep = raw[:start - first + 1]
            else:
                keep = [json.dumps(h)] + [_dumps(record(e.step, e.seeds, [c * len(e.seeds) for c in e.coefs], e.lr,
                                                        e.eps, e.wd, e.skipped)) for e in entries[:start - first]]
    except (OSError, TrajectoryError) as e:
        log.warning("trajectory %s unreadable (%s)", src, e)
    if keep is None:
        log.warning(
            "no complete trajectory up to step %d at %s: %s starts at step %d and needs the checkpoint to be "
            "replayed", start, src, path, start)
        return Writer(path, header={**fresh, "start_step": start})
    return Writer(path, keep=keep)


def _entry(rec: dict, where: str) -> Entry:
    try:
        # null (and, in files before strict JSON, NaN): the g of a skipped non-finite step
        seeds, grads = [int(s) for s in rec["seeds"]], [math.nan if g is None else float(g) for g in rec["g"]]
        n = int(rec.get("n", len(seeds)))
        if n != len(seeds) or n != len(grads) or n < 1:
            raise TrajectoryError(f"{where}: n={n} but {len(seeds)} seeds and {len(grads)} gradients")
        return Entry(int(rec["step"]), seeds, [g / n for g in grads], float(rec["lr"]), float(rec["eps"]),
                     float(rec["wd"]), bool(rec.get("skipped", False)), grads)
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, TrajectoryError):
            raise
        raise TrajectoryError(f"{where}: not a trajectory step record ({type(e).__name__}: {e})") from None


def read(path: str, allow_truncated: bool = False) -> tuple[dict, list[Entry], list[str], bool]:
    """(header, entries, raw lines kept, truncated) of a JSON-lines or compact binary trajectory.
    Checks that steps are consecutive. A last line without its newline (a crash mid-write) is
    dropped when allow_truncated, else an error; a bad line elsewhere is always an error."""
    with open(path, "rb") as f:
        data = f.read()
    if data.startswith(MAGIC):
        header, entries = _read_binary(path, data)
        return header, entries, [], False
    text = data.decode("utf-8", errors="replace")
    if not text.strip():
        raise TrajectoryError(f"{path}: empty file")
    raw = text.split("\n")
    truncated = False
    if raw[-1] == "":
        raw.pop()
    else:  # no trailing newline: the last line was being written when the writer stopped
        try:
            json.loads(raw[-1])
            ok = raw[-1].rstrip().endswith("}")
        except ValueError:
            ok = False
        if not ok:
            if not allow_truncated:
                raise TrajectoryError(f"{path}: line {len(raw)} is truncated (the writer was killed mid-line)")
            raw.pop()
            truncated = True
    try:
        header = json.loads(raw[0])
    except ValueError:
        raise TrajectoryError(f"{path}: line 1 is not a trajectory header (not JSON)") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise TrajectoryError(f"{path}: line 1 is not a {FORMAT} header")
    entries = []
    expect = int(header.get("start_step", 0)) + 1
    for i, line in enumerate(raw[1:], start=2):
        try:
            rec = json.loads(line)
        except ValueError:
            raise TrajectoryError(f"{path}: line {i} is not valid JSON (truncated or corrupt)") from None
        e = _entry(rec, f"{path}: line {i}")
        if e.step != expect:
            raise TrajectoryError(f"{path}: line {i} has step {e.step}, expected {expect} (missing or repeated entries)")
        expect += 1
        entries.append(e)
    return header, entries, raw, truncated


def _read_binary(path: str, data: bytes) -> tuple[dict, list[Entry]]:
    try:
        (hlen,) = struct.unpack_from("<I", data, len(MAGIC))
        header = json.loads(data[len(MAGIC) + 4: len(MAGIC) + 4 + hlen])
    except (struct.error, ValueError):
        raise TrajectoryError(f"{path}: corrupt binary trajectory header") from None
    body = data[len(MAGIC) + 4 + hlen:]
    n = int(header["zo_num_samples"])
    rec = 4 * n
    if len(body) % rec:
        raise TrajectoryError(f"{path}: binary trajectory is truncated ({len(body)} bytes is not a multiple of {rec})")
    coefs = np.frombuffer(body, dtype="<f4").reshape(-1, n)
    start = int(header.get("start_step", 0))
    entries = []
    for i, row in enumerate(coefs):
        step = start + i + 1
        skipped = bool(np.isnan(row).any())
        seeds = [step_seed(header["seed"], step - 1, j, n) for j in range(n)]
        entries.append(Entry(step, seeds, [float(c) for c in row], _lr(header, step - 1), float(header["zo_eps"]),
                             float(header["weight_decay"]), skipped))
    return header, entries


def _lr(header: dict, step: int) -> float:
    return lr_at(header["lr_scheduler_type"], header["learning_rate"], header["max_steps"], step)


def to_binary(header: dict, entries: list[Entry]) -> bytes:
    """The compact form. Refuses a trajectory whose seeds / lr / eps / wd are not the pure
    functions of the header that the compact form assumes."""
    n = int(header["zo_num_samples"])
    out = np.empty((len(entries), n), dtype="<f4")
    for i, e in enumerate(entries):
        if e.seeds != [step_seed(header["seed"], e.step - 1, j, n) for j in range(n)] or e.lr != _lr(header, e.step - 1) \
                or e.eps != header["zo_eps"] or e.wd != header["weight_decay"]:
            raise TrajectoryError(f"step {e.step}: seeds/lr/eps/wd differ from the header's; keep the JSON form")
        out[i] = [math.nan] * n if e.skipped else e.coefs
    h = json.dumps(header, separators=(",", ":")).encode()
    return MAGIC + struct.pack("<I", len(h)) + h + out.tobytes()


def replay(engine, entries: list[Entry], method: str = "mezo") -> None:
    """Apply the updates of `entries` to the engine's parameters with the same floating-point
    operations, in the same order, as training did (no forward passes):

    - numerics "reference" (in place) the parameters go through +eps, -2eps, +eps (restore)
      for every direction, as in training; the restore is not bit-exact in floating point, so
      skipping these sweeps would give different bits;
    - "master" perturbs only the parameter copy and "stochastic" never perturbs the stored
      parameters at all: the updates suffice (the same update sweeps, rounding bits included).
    The engine is configured for the trajectory's method (mezo.methods.configure: a block-sparse
    one's directions cover its seeds' blocks only); in place, `method` says which perturbations
    a step made (mezo.methods.replay_moves). Ends with engine.flush(): the parameters hold
    exactly theta."""
    from mezo.methods import replay_moves  # here: the compact tool needs no torch
    in_place = engine.numerics == "reference"
    for e in entries:
        if in_place:
            replay_moves(engine, method, e.seeds, e.eps)
        if not e.skipped:
            engine.schedule_coefficients(e.seeds, e.coefs, e.lr, e.wd)
            if not in_place or not engine.fused:
                engine.flush()
    engine.flush()


def synthetic(path: str, steps: int = 20000, n: int = 1, seed: int = 42) -> int:
    """Write a `steps`-line trajectory with the real writer (random gradients); returns its size."""
    s = dict(model_name="facebook/opt-13b", gguf_file=None, dtype="fp16", master_weights=True, zo_dist="gaussian",
             zo_backend="compile", fused=True, seed=seed, zo_eps=1e-3, zo_num_samples=n, weight_decay=0.0,
             learning_rate=1e-7, lr_scheduler_type="constant", max_steps=steps, task_name="SST2",
             batch_size=16, gradient_accumulation_steps=1, num_train=1000, train_set_seed=0)
    w = Writer(path, header(s, 8), fsync=False)  # same bytes; 20,000 fsyncs only cost time
    rng = np.random.RandomState(0)
    for t in range(steps):
        w.write(t + 1, [step_seed(seed, t, j, n) for j in range(n)], list(rng.standard_normal(n) * 10),
                _lr(s, t), s["zo_eps"], s["weight_decay"])
    w.close()
    return os.path.getsize(path)


def main(argv=None) -> int:
    import argparse
    p = argparse.ArgumentParser(prog="python -m mezo.trajectory")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("compact", help="convert trajectory.jsonl to the compact binary form")
    c.add_argument("input")
    c.add_argument("output")
    s = sub.add_parser("size", help="write a synthetic trajectory with the real writer and report sizes")
    s.add_argument("--steps", type=int, default=20000)
    s.add_argument("--n", type=int, default=1)
    s.add_argument("--dir", default=".")
    a = p.parse_args(argv)
    try:
        if a.cmd == "compact":
            header, entries, _, _ = read(a.input)
            blob = to_binary(header, entries)
            with open(a.output, "wb") as f:
                f.write(blob)
            print(f"{a.input}: {os.path.getsize(a.input)} bytes -> {a.output}: {len(blob)} bytes ({len(entries)} steps)")
        else:
            jp = os.path.join(a.dir, f"trajectory_{a.steps}.jsonl")
            size = synthetic(jp, a.steps, a.n)
            header, entries, _, _ = read(jp)
            blob = to_binary(header, entries)
            bp = jp[:-len(".jsonl")] + ".bin"
            with open(bp, "wb") as f:
                f.write(blob)
            print(json.dumps({"steps": a.steps, "n": a.n, "jsonl_bytes": size, "binary_bytes": len(blob),
                              "jsonl_path": jp, "binary_path": bp}))
    except (OSError, TrajectoryError) as e:
        die(str(e), "python -m mezo.trajectory")
    return 0


if __name__ == "__main__":
    sys.exit(main())

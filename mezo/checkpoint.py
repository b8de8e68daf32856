"""No lost work: sharded checkpoints, resume, preemption, the trajectory log and non-finite steps.

Checkpoints (torch.distributed.checkpoint, DCP) go to <output_dir>/checkpoints/step_<n>/ every
--save_steps steps and at the end. Each is written to checkpoints/.tmp-step_<n>/ and renamed
when complete (manifest.json is written last), so a half-written checkpoint is never picked up:

    step_<n>/.metadata, __<rank>_0.distcp   model shards ("model.*") and, with master weights,
                                            the fp32 master shards ("master.<param>")
    step_<n>/state.json                     metrics so far, scheduler, data position, RNG / seeds,
                                            counters
    step_<n>/manifest.json                  step, seed, world size, model, settings; "complete"

--resume_from_checkpoint auto takes the newest complete checkpoint in --output_dir and then
replays (no forward passes) the steps that <output_dir>/trajectory.jsonl has beyond it; with no
checkpoint it rebuilds from the base model and the trajectory alone. A kill (even SIGKILL) thus
loses at most the step in progress.

The engine is flushed before saving, so the shards hold exactly theta. DCP reshards on load,
and MeZO directions do not depend on sharding, so a checkpoint written by N ranks resumes on M.

Exit codes: 0 done, 2 bad input (one line naming the flag / file), EXIT_NONFINITE (3) a
non-finite loss or projected gradient without --skip_nonfinite, EXIT_PREEMPTED (75) after
SIGTERM / SIGUSR1: all ranks agree at the next step boundary, checkpoint, and exit.
"""
from __future__ import annotations

import base64
import glob
import json
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import time

import torch

from mezo import distributed as D
from mezo import trajectory as T
from mezo.schedule import lr_at, step_seed
from mezo.telemetry import log, write_json

EXIT_BAD_INPUT = 2
EXIT_NONFINITE = 3
EXIT_PREEMPTED = 75          # EX_TEMPFAIL: "try again" (requeue and resume)
PREEMPT_SIGNALS = ("SIGTERM", "SIGUSR1")
CKPT_FORMAT = "mezo-checkpoint"
# settings that must be equal for a resumed run to continue the same trajectory
RESUME_KEYS = ("task_name", "seed", "zo_eps", "zo_num_samples", "zo_dist", "dtype", "use_master", "batch_size",
               "gradient_accumulation_steps", "num_train", "train_set_seed", "learning_rate", "lr_scheduler_type",
               "weight_decay")
FAULT_ENV = "MEZO_FAULT_NONFINITE_STEPS"   # testing hook: comma-separated 1-based steps whose L+ becomes NaN
KILL_ENV = "MEZO_FAULT_KILL_AFTER_STEP"    # testing hook: SIGKILL itself after this step's trajectory line


class StopRun(Exception):
    code = 1
    status = "failed"


class Preempted(StopRun):
    code = EXIT_PREEMPTED
    status = "preempted"


class NonFinite(StopRun):
    code = EXIT_NONFINITE


class CheckpointError(StopRun):
    code = EXIT_BAD_INPUT


def report(e: StopRun) -> int:
    if D.is_main() or not isinstance(e, Preempted):
        print(f"accelerate_mezo.py: {'error: ' if e.code != EXIT_PREEMPTED else ''}{e}", file=sys.stderr, flush=True)
    return e.code


# ---------------------------------------------------------------------------- flags
def add_args(p) -> None:
    a = p.add_argument_group("checkpointing").add_argument
    a("--save_steps", type=int, default=0, help="steps between checkpoints (0: only at the end and on preemption)")
    a("--save_total_limit", type=int, default=0, help="keep only the newest N checkpoints (0: keep all)")
    a("--resume_from_checkpoint", default=None,
      help="'auto' (latest complete checkpoint in --output_dir, else start fresh), a checkpoints/step_<n> "
           "folder, an output dir holding checkpoints/, or a trajectory file (as --resume_trajectory)")
    a("--resume_trajectory", default=None,
      help="rebuild the weights from --model_name + this trajectory.jsonl (or compact .bin), then continue")
    a("--skip_nonfinite", action="store_true",
      help="skip (do not apply) steps with a NaN/inf loss or projected gradient instead of stopping")


def _fail(msg: str):
    print(f"accelerate_mezo.py: error: {msg}", file=sys.stderr)
    sys.exit(EXIT_BAD_INPUT)


def _same_model(a: str | None, b: str | None) -> bool:
    if a == b:
        return True
    if a and b and os.path.exists(os.path.expanduser(a)) and os.path.exists(os.path.expanduser(b)):
        return os.path.realpath(os.path.expanduser(a)) == os.path.realpath(os.path.expanduser(b))
    return False


def read_manifest(path: str) -> dict | None:
    try:
        with open(os.path.join(path, "manifest.json")) as f:
            m = json.load(f)
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) and m.get("format") == CKPT_FORMAT and m.get("complete") else None


def list_checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """(step, path) of the complete checkpoints in output_dir, oldest first."""
    out = []
    for path in glob.glob(os.path.join(output_dir, "checkpoints", "step_*")):
        m = re.fullmatch(r"step_(\d+)", os.path.basename(path))
        if m and read_manifest(path) is not None:
            out.append((int(m.group(1)), path))
    return sorted(out)


def check_writable(flag: str, folder: str):
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".write-test-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        _fail(f"{flag} {folder}: not writable ({e.strerror or e})")


def _check_settings(what: str, saved: dict, args, keys) -> None:
    for k in keys:
        if k not in saved:
            continue
        mine = getattr(args, k)
        if k == "use_master" or k == "master_weights":
            mine = args.use_master
        if saved[k] != mine and not (isinstance(mine, float) and isinstance(saved[k], (int, float))
                                     and float(saved[k]) == mine):
            flag = {"use_master": "--master_weights/--no_master_weights",
                    "master_weights": "--master_weights/--no_master_weights"}.get(k, f"--{k}")
            _fail(f"{what} was written with {flag} {saved[k]!r}, this run has {mine!r}; "
                  f"a resumed run must use the same setting")


def resolve_args(args, world_size: int) -> None:
    """Check the checkpoint flags before anything is loaded; sets args.resume_ckpt_path."""
    for flag in ("save_steps", "save_total_limit"):
        if getattr(args, flag) < 0:
            _fail(f"--{flag} must be >= 0 (got {getattr(args, flag)})")
    check_writable("--output_dir", args.output_dir)
    args.resume_ckpt_path = None
    r = args.resume_from_checkpoint
    if r is not None and args.resume_trajectory is not None:
        _fail("--resume_from_checkpoint and --resume_trajectory contradict each other: pass one")
    args.resume_tail = None
    if r == "auto":
        found = list_checkpoints(args.output_dir)
        args.resume_ckpt_path = found[-1][1] if found else None
        # the trajectory is a checkpoint too: steps it has beyond the newest checkpoint are replayed
        # (no forward passes), so a kill loses at most the step in progress
        own = os.path.join(args.output_dir, T.FILENAME)
        span = _trajectory_span(own)
        if span is not None:
            first, last = span
            if found and first <= found[-1][0] < last:
                args.resume_tail = own
            elif not found and first == 0 and last > 0:
                args.resume_trajectory = own
    elif r is not None:
        if not os.path.exists(r):
            _fail(f"--resume_from_checkpoint {r}: no such file or directory")
        if os.path.isfile(r):
            args.resume_trajectory = r
        elif read_manifest(r) is not None:
            args.resume_ckpt_path = r
        elif list_checkpoints(r):
            args.resume_ckpt_path = list_checkpoints(r)[-1][1]
        else:
            hint = " (incomplete: it has no manifest.json, the save was interrupted)" if os.path.basename(
                os.path.normpath(r)).startswith((".tmp-", "step_")) else ""
            _fail(f"--resume_from_checkpoint {r}: not a checkpoint{hint}; pass checkpoints/step_<n>, "
                  f"an output dir holding checkpoints/, a trajectory file, or 'auto'")
    if args.resume_ckpt_path:
        m = read_manifest(args.resume_ckpt_path)
        if not _same_model(m.get("model_name"), args.model_name) or m.get("gguf_file") != args.gguf_file:
            _fail(f"--resume_from_checkpoint {args.resume_ckpt_path}: written for model {m.get('model_name')!r}"
                  f"{' (' + m['gguf_file'] + ')' if m.get('gguf_file') else ''}, not --model_name {args.model_name!r}")
        keys = RESUME_KEYS + (("max_steps",) if args.lr_scheduler_type == "linear" else ())
        _check_settings(f"--resume_from_checkpoint {args.resume_ckpt_path}", m.get("args", {}), args, keys)
        if m["step"] > args.max_steps:
            _fail(f"--resume_from_checkpoint {args.resume_ckpt_path}: at step {m['step']}, past --max_steps {args.max_steps}")
    if args.resume_tail is not None:
        header, entries, _, _ = T.read(args.resume_tail, allow_truncated=True)
        _check_trajectory_header("--resume_from_checkpoint auto", args.resume_tail, header, args)
        if entries[-1].step > args.max_steps:
            _fail(f"--resume_from_checkpoint auto: {args.resume_tail} has {entries[-1].step} steps, "
                  f"more than --max_steps {args.max_steps}")
    if args.resume_trajectory is not None:
        path = args.resume_trajectory
        flag = "--resume_trajectory" if r is None else "--resume_from_checkpoint"
        if r == "auto":
            flag = "--resume_from_checkpoint auto:"
        if not os.path.isfile(path):
            _fail(f"{flag} {path}: no such file")
        try:
            header, entries, _, truncated = T.read(path, allow_truncated=True)
        except (OSError, T.TrajectoryError) as e:
            _fail(f"{flag} {e}")
        if header.get("start_step", 0):
            _fail(f"{flag} {path}: starts at step {header['start_step']}, not at the base model; "
                  f"resume from the checkpoint it continues instead")
        _check_trajectory_header(flag, path, header, args)
        if len(entries) > args.max_steps:
            _fail(f"{flag} {path}: has {len(entries)} steps, more than --max_steps {args.max_steps}")


def _trajectory_span(path: str) -> tuple[int, int] | None:
    """(start step, last step) of a readable trajectory file, else None."""
    if not os.path.isfile(path):
        return None
    try:
        header, entries, _, _ = T.read(path, allow_truncated=True)
    except (OSError, T.TrajectoryError) as e:
        log.warning("%s: not used for resuming (%s)", path, e)
        return None
    first = int(header.get("start_step", 0))
    return first, entries[-1].step if entries else first


def _check_trajectory_header(flag: str, path: str, header: dict, args) -> None:
    if not _same_model(header.get("model_name"), args.model_name) or header.get("gguf_file") != args.gguf_file:
        _fail(f"{flag} {path}: recorded for model {header.get('model_name')!r}, not --model_name {args.model_name!r}")
    keys = tuple(k for k in RESUME_KEYS + ("master_weights",) if k != "use_master") + (
        ("max_steps",) if args.lr_scheduler_type == "linear" else ())
    _check_settings(f"{flag} {path}", header, args, keys)


# ---------------------------------------------------------------------------- signals
_PREEMPT = {"signal": None}


def _on_signal(signum, frame):
    _PREEMPT["signal"] = signal.Signals(signum).name
    try:
        os.write(2, f"[rank {D.rank()}] {signal.Signals(signum).name}: checkpointing at the next step boundary\n".encode())
    except OSError:
        pass


def install_signal_handlers() -> None:
    import threading
    if threading.current_thread() is not threading.main_thread():
        return
    for name in PREEMPT_SIGNALS:
        signal.signal(getattr(signal, name), _on_signal)


def preempt_requested() -> bool:
    """True on every rank when any rank got a preemption signal (one all-reduce)."""
    flag = torch.tensor([1.0 if _PREEMPT["signal"] else 0.0])
    return bool(D.all_reduce_sum(flag)[0] > 0)


# ---------------------------------------------------------------------------- state dicts
def _master_state(engine, model) -> dict:
    """The fp32 master shards as tensors shaped (and, under FSDP2, sharded) like the parameters."""
    slots = {s.name: s for s in engine.slots}
    out = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        data = p.data
        local = data.to_local() if hasattr(data, "to_local") else data
        slot = slots.get(name)
        m = slot.master.view(local.shape) if slot is not None else torch.zeros(local.shape, dtype=torch.float32,
                                                                                  device=local.device)
        if hasattr(data, "to_local"):
            from torch.distributed.tensor import DTensor
            m = DTensor.from_local(m, data.device_mesh, data.placements, run_check=False, shape=data.shape,
                                   stride=data.stride())
        out[name] = m
    return out


def _fsync_dir(path: str):
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


class Session:
    """The training loop's checkpoint / resume / trajectory / fault handling (see mezo/zo_trainer.py)."""

    def __init__(self, args, model, metrics):
        self.args, self.model, self.metrics = args, model, metrics
        self.main = D.is_main()
        self.root = os.path.join(args.output_dir, "checkpoints")
        self.last_ckpt = None
        self.last_saved_step = None
        self.skipped = 0
        self.traj = None
        self.start = 0
        self._entries = None
        self.faults = {int(s) for s in os.environ.get(FAULT_ENV, "").split(",") if s.strip()}
        self.kill_after = int(os.environ.get(KILL_ENV) or 0)
        self._replay_src = None
        install_signal_handlers()
        if self.main:
            for tmp in glob.glob(os.path.join(self.root, ".tmp-step_*")):  # leftovers of an interrupted save
                shutil.rmtree(tmp, ignore_errors=True)

    # ------------------------------------------------------------------ resume
    def resume_model(self) -> int:
        """Load the checkpoint's model shards (resharded to this world size) or read the
        trajectory to replay; restore metrics; open the trajectory log. Returns the start step."""
        a = self.args
        if a.resume_ckpt_path:
            path = a.resume_ckpt_path
            m = read_manifest(path)
            self._load({"model": self.model.state_dict()}, path)
            with open(os.path.join(path, "state.json")) as f:
                st = json.load(f)
            self.start = int(m["step"])
            self.last_ckpt, self.last_saved_step = path, self.start
            self.skipped = int(st.get("skipped_nonfinite", 0))
            rng = (st.get("rng") or {}).get("torch_cpu_state")
            if rng:
                torch.set_rng_state(torch.frombuffer(bytearray(base64.b64decode(rng)), dtype=torch.uint8))
            resumed = {"checkpoint": path, "step": self.start, "saved_world_size": m["world_size"],
                       "world_size": D.world_size()}
            self._restore_metrics(st.get("metrics") or {}, resumed)
            log.info("resumed from %s at step %d (saved by %d ranks, now %d)", path, self.start, m["world_size"],
                     D.world_size())
            src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(path))), T.FILENAME)
            if getattr(a, "resume_tail", None):  # auto: the trajectory's steps after the checkpoint
                _, entries, _, truncated = T.read(a.resume_tail, allow_truncated=True)
                tail = [e for e in entries if e.step > self.start]
                if tail:
                    self._entries, self._replay_src = tail, a.resume_tail
                    self._restore_tail_metrics(tail)
                    self.skipped += sum(e.skipped for e in tail)
                    self.metrics.data["skipped_nonfinite"] = self.skipped
                    resumed["replayed_steps"] = [tail[0].step, tail[-1].step]
                    self.start = resumed["step"] = tail[-1].step
                    log.info("%s has steps %d..%d beyond the checkpoint: replaying them", a.resume_tail,
                             tail[0].step, tail[-1].step)
                src = a.resume_tail
        elif a.resume_trajectory:
            header, self._entries, _, truncated = T.read(a.resume_trajectory, allow_truncated=True)
            if truncated:
                log.warning("%s: dropped a truncated last line", a.resume_trajectory)
            self._replay_src = a.resume_trajectory
            self._restore_tail_metrics(self._entries)
            self.start = len(self._entries)
            self.skipped = sum(e.skipped for e in self._entries)
            self._restore_metrics({}, {"trajectory": a.resume_trajectory, "step": self.start,
                                       "world_size": D.world_size()})
            src = a.resume_trajectory
        else:
            src = None
        if self.main:
            self._open_trajectory(src)
        return self.start

    def attach(self, engine) -> None:
        """After the engine exists: load the master shards, or replay the trajectory."""
        self.engine = engine
        if self.args.resume_ckpt_path and engine.master_weights:
            self._load({"master": _master_state(engine, self.model)}, self.args.resume_ckpt_path)
            engine.write_master()
        if self._entries is not None:
            t0 = time.time()
            T.replay(engine, self._entries)
            log.info("replayed %d steps from %s in %.1fs", len(self._entries), self._replay_src, time.time() - t0)
            self._entries = None

    def _load(self, sd: dict, path: str):
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.api import CheckpointException  # a BaseException
        try:
            dcp.load(sd, checkpoint_id=path)
        except (Exception, CheckpointException) as e:  # noqa: BLE001 - one line for the user
            msg = " ".join(str(e).split())[:300]
            raise CheckpointError(f"--resume_from_checkpoint {path}: cannot load into --model_name "
                                  f"{self.args.model_name} ({type(e).__name__}: {msg})") from None

    def _restore_tail_metrics(self, entries) -> None:
        """Per-step records of replayed steps: from the interrupted run's training_metrics.json
        where it has them (it is written every --log_steps), else what the trajectory knows."""
        if not self.main or not entries:
            return
        old_steps, old_evals = {}, []
        try:
            with open(os.path.join(self.args.output_dir, "training_metrics.json")) as f:
                old = json.load(f)
            old_steps = {r["step"]: r for r in old.get("steps") or [] if isinstance(r, dict) and "step" in r}
            old_evals = [r for r in old.get("evals") or [] if isinstance(r, dict) and "step" in r]
        except (OSError, ValueError, TypeError, AttributeError):
            pass
        d = self.metrics.data
        for e in entries:
            rec = old_steps.get(e.step)
            if rec is None or rec.get("seeds") not in (None, e.seeds):
                rec = {"step": e.step, "projected_grad": sum(e.grads) / len(e.grads) if e.grads else None,
                       "lr": e.lr, "step_time_s": 0.0, "seeds": e.seeds, "replayed": True}
            d["steps"].append(rec)
        lo, hi = entries[0].step, entries[-1].step
        d["evals"] = [r for r in d.get("evals") or [] if r["step"] < lo] + [r for r in old_evals if lo <= r["step"] <= hi]

    def _restore_metrics(self, saved: dict, resumed: dict):
        d = self.metrics.data
        for k in ("steps", "evals", "zero_shot"):
            if saved.get(k) is not None:
                d[k] = saved[k]
        d["resumed"] = list(saved.get("resumed") or []) + [resumed]
        d["skipped_nonfinite"] = self.skipped

    def _open_trajectory(self, src: str | None):
        path = os.path.join(self.args.output_dir, T.FILENAME)
        a = self.args
        if src is None:
            self.traj = T.Writer(path, header=T.header_from_args(a, D.world_size()))
            return
        keep = None
        try:
            header, entries, raw, truncated = T.read(src, allow_truncated=True)
            first = int(header.get("start_step", 0))
            if first <= self.start <= first + len(entries):
                if raw:
                    keep = raw[:self.start - first + 1]
                else:  # compact binary source: rewrite as JSON lines
                    keep = [json.dumps(header)] + [json.dumps(
                        {"step": e.step, "seeds": e.seeds, "g": [c * len(e.seeds) for c in e.coefs], "lr": e.lr,
                         "eps": e.eps, "n": len(e.seeds), "wd": e.wd, **({"skipped": True} if e.skipped else {})},
                        separators=(",", ":")) for e in entries[:self.start - first]]
        except (OSError, T.TrajectoryError) as e:
            log.warning("trajectory %s unreadable (%s)", src, e)
        if keep is None:
            log.warning("no complete trajectory up to step %d at %s: %s starts at step %d and needs the "
                        "checkpoint to be replayed", self.start, src, path, self.start)
            h = T.header_from_args(a, D.world_size())
            h["start_step"] = self.start
            self.traj = T.Writer(path, header=h)
        else:
            self.traj = T.Writer(path, keep=keep)

    # ------------------------------------------------------------------ per step
    def check(self, engine, step: int, grads: list, losses: list) -> bool:
        """After engine.step: True when the step is skipped (non-finite, --skip_nonfinite);
        raises NonFinite without the flag. The update of a non-finite step is never applied."""
        if step + 1 in self.faults:
            losses[0] = (math.nan, losses[0][1])
            grads[0] = math.nan
        if all(math.isfinite(v) for v in [*grads, *(x for pair in losses for x in pair)]):
            return False
        engine.drop_update()
        lp, lm = losses[0]
        what = f"step {step + 1}: non-finite loss or projected gradient (L+={lp}, L-={lm}, g={grads})"
        if self.args.skip_nonfinite:
            self.skipped += 1
            self.metrics.data["skipped_nonfinite"] = self.skipped
            log.warning("%s: skipped (--skip_nonfinite), %d skipped so far", what, self.skipped)
            return True
        last = self.last_ckpt or "none"
        log.error("%s; last good checkpoint: %s", what, last)
        raise NonFinite(f"{what}; last good checkpoint: {last} (resume with --resume_from_checkpoint; "
                        f"--skip_nonfinite skips such steps)")

    def after_step(self, engine, step: int, seeds, grads, lr: float, skipped: bool) -> None:
        """Trajectory line, periodic checkpoint, preemption check (all ranks agree)."""
        a = self.args
        done = step + 1
        if self.traj:
            self.traj.write(done, seeds, grads, lr, a.zo_eps, a.weight_decay, skipped)
        if done == self.kill_after:  # testing hook: a crash between the trajectory line and anything else
            os.kill(os.getpid(), signal.SIGKILL)
        if a.save_steps and done % a.save_steps == 0 and done < a.max_steps:
            self.save(engine, done)
        if preempt_requested():
            self.save(engine, done)
            self.metrics.data["preempted"] = {"signal": _PREEMPT["signal"], "step": done, "checkpoint": self.last_ckpt}
            self.metrics.save("preempted")
            raise Preempted(f"preempted ({_PREEMPT['signal'] or 'signal on another rank'}) after step {done}; "
                            f"checkpoint {self.last_ckpt}; exit {EXIT_PREEMPTED}: rerun with "
                            f"--resume_from_checkpoint auto")

    def finish(self, engine) -> None:
        self.save(engine, self.args.max_steps)
        if self.traj:
            self.traj.close()

    # ------------------------------------------------------------------ save
    def save(self, engine, step: int) -> str:
        if step == self.last_saved_step:
            return self.last_ckpt
        import torch.distributed.checkpoint as dcp
        a = self.args
        engine.flush()
        t0 = time.time()
        tmp = os.path.join(self.root, f".tmp-step_{step}")
        final = os.path.join(self.root, f"step_{step}")
        if self.main:
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp)
        D.barrier()
        sd = {"model": self.model.state_dict()}
        if engine.master_weights:
            sd["master"] = _master_state(engine, self.model)
        dcp.save(sd, checkpoint_id=tmp)
        if self.main:
            per_step = a.batch_size * a.gradient_accumulation_steps
            write_json(os.path.join(tmp, "state.json"), {
                "step": step, "seed": a.seed, "skipped_nonfinite": self.skipped,
                "data_position": {"step": step, "examples_consumed": step * per_step, "batch_size": a.batch_size,
                                  "gradient_accumulation_steps": a.gradient_accumulation_steps,
                                  "data_seed": a.seed},
                # directions need no RNG state: step_seed(seed, step, j, n) is counter-based; the global
                # torch generator (restored on resume) is saved for anything else that draws from it
                "rng": {"seed": a.seed, "direction_seeds": "mezo.schedule.step_seed(seed, step, j, n)",
                        "next_seeds": [step_seed(a.seed, step, j, a.zo_num_samples) for j in range(a.zo_num_samples)],
                        "torch_cpu_state": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode()},
                "scheduler": {"type": a.lr_scheduler_type, "learning_rate": a.learning_rate,
                              "max_steps": a.max_steps, "next_lr": lr_at(a, step)},
                "metrics": self.metrics.data})
            write_json(os.path.join(tmp, "manifest.json"), {
                "format": CKPT_FORMAT, "version": 1, "complete": True, "step": step, "seed": a.seed,
                "world_size": D.world_size(), "model_name": a.model_name, "gguf_file": a.gguf_file,
                "dtype": a.dtype, "master_weights": a.use_master,
                "args": {k: getattr(a, k) for k in RESUME_KEYS + ("max_steps",)},
                "trajectory": os.path.abspath(os.path.join(a.output_dir, T.FILENAME)),
                "files": sorted(os.listdir(tmp)) + ["manifest.json"], "time": time.time()})
            if os.path.exists(final):
                shutil.rmtree(final)
            os.rename(tmp, final)
            _fsync_dir(self.root)
            if a.save_total_limit:
                for _, old in list_checkpoints(a.output_dir)[:-a.save_total_limit]:
                    shutil.rmtree(old, ignore_errors=True)
        D.barrier()
        self.last_ckpt, self.last_saved_step = final, step
        log.info("checkpoint %s (%.1fs)", final, time.time() - t0)
        return final

"""The resume plan: what --resume_from_checkpoint / --resume_trajectory point at, checked before
anything is loaded, and the rule a resumed run obeys: the settings that shape the trajectory
(MUST_MATCH) are those the checkpoint or trajectory was written with.

    ResumePlan(checkpoint=None, tail=None, trajectory=None)    a fresh run
    ResumePlan(checkpoint="…/checkpoints/step_200")            load its shards, continue
    ResumePlan(checkpoint=…, tail="…/trajectory.jsonl")        auto: and replay the trajectory's
                                                               steps beyond the checkpoint
    ResumePlan(trajectory="…/trajectory.jsonl")                rebuild from the base model + replay
"""
from __future__ import annotations

import base64
import os
import time
from dataclasses import dataclass, field

import torch

from mezo import checkpoint, distributed as D, noise, trajectory as T
from mezo.errors import BadInput
from mezo.telemetry import log

# settings that must be equal for a resumed run to continue the same trajectory (names as in
# mezo.config.Config.settings(), the trajectory header and the checkpoint manifest); with a
# linear schedule, max_steps too
MUST_MATCH = ("task_name", "seed", "zo_eps", "zo_num_samples", "zo_dist", "dtype", "master_weights", "numerics",
              "batch_size", "gradient_accumulation_steps", "num_train", "train_set_seed", "learning_rate",
              "lr_scheduler_type", "weight_decay", "generator")
# the method's settings (mezo.config.method_settings: only in the settings of methods other than
# mezo, implied "mezo" elsewhere), checked first: another method's run is refused as such, not for
# the settings that follow from it (fzoo's number of directions, its distribution)
METHOD_KEYS = ("zo_method", "zo_blocks")
FLAG_OF = {"master_weights": "--master_weights/--no_master_weights", "numerics": "--numerics",
           "generator": "--zo_generator"}


def saved_value(saved: dict, key: str):
    """`key` of a trajectory header or manifest, where files written before the key existed imply
    it: numerics from master_weights (the only two schemes then), tie_emb True (masked LMs were
    tied), generator lowbias32-v1 (the only one then). None: not recorded and not implied."""
    if key in saved:
        return saved[key]
    master = saved.get("master_weights", saved.get("use_master"))
    if key == "master_weights":
        return master
    if key == "numerics" and master is not None:
        return "master" if master else "reference"
    if key == "tie_emb":
        return True
    if key == "generator":  # z's generator before generators were versioned
        return noise.LEGACY_GENERATOR
    if key == "zo_method":  # MeZO's settings carry no method (mezo.config.method_settings)
        return "mezo"
    return None


@dataclass(frozen=True)
class ResumePlan:
    checkpoint: str | None = None   # a complete checkpoint folder to load
    tail: str | None = None         # a trajectory whose steps beyond the checkpoint are replayed
    trajectory: str | None = None   # a trajectory from the base model to replay (no checkpoint)
    trained_from: dict | None = field(default=None, compare=False)  # its header: base_model, base_fingerprint

    @property
    def fresh(self) -> bool:
        return not (self.checkpoint or self.trajectory)


def must_match(settings: dict) -> tuple[str, ...]:
    return METHOD_KEYS + MUST_MATCH + (("tie_emb",) if "tie_emb" in settings else ()) + \
        (("max_steps",) if settings["lr_scheduler_type"] == "linear" else ())


def same_model(a: str | None, b: str | None) -> bool:
    if a == b:
        return True
    if a and b and os.path.exists(os.path.expanduser(a)) and os.path.exists(os.path.expanduser(b)):
        return os.path.realpath(os.path.expanduser(a)) == os.path.realpath(os.path.expanduser(b))
    return False


def check_compatible(what: str, saved: dict, settings: dict) -> None:
    """BadInput unless `saved` (a trajectory header or a manifest's settings) has this run's model
    and MUST_MATCH settings."""
    if not same_model(saved.get("model_name"), settings["model_name"]) or \
            saved.get("gguf_file") != settings["gguf_file"]:
        gguf = f" ({saved['gguf_file']})" if saved.get("gguf_file") else ""
        raise BadInput(f"{what}: written for model {saved.get('model_name')!r}{gguf}, "
                       f"not --model_name {settings['model_name']!r}")
    for k in must_match(settings):
        theirs = saved_value(saved, k)
        if theirs is None and k not in saved:
            continue
        mine = saved_value(settings, k)
        if theirs != mine and not (isinstance(mine, float) and isinstance(theirs, (int, float))
                                   and float(theirs) == mine):
            raise BadInput(f"{what} was written with {FLAG_OF.get(k, '--' + k)} {theirs!r}, this run has "
                           f"{mine!r}; a resumed run must use the same setting")


def trajectory_span(path: str) -> tuple[int, int] | None:
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


def plan(resume_from: str | None, resume_trajectory: str | None, output_dir: str, settings: dict) -> ResumePlan:
    """The plan for the two flags, or BadInput naming the flag and the file."""
    if resume_from is not None and resume_trajectory is not None:
        raise BadInput("--resume_from_checkpoint and --resume_trajectory contradict each other: pass one")
    max_steps = settings["max_steps"]
    ckpt, tail, traj = None, None, resume_trajectory
    if resume_from == "auto":
        found = checkpoint.list_checkpoints(output_dir)
        ckpt = found[-1][1] if found else None
        # the trajectory is a checkpoint too: steps it has beyond the newest checkpoint are replayed
        # (no forward passes), so a kill loses at most the step in progress
        own = os.path.join(output_dir, T.FILENAME)
        span = trajectory_span(own)
        if span is not None:
            first, last = span
            if found and first <= found[-1][0] < last:
                tail = own
            elif not found and first == 0 and last > 0:
                traj = own
    elif resume_from is not None:
        if not os.path.exists(resume_from):
            raise BadInput(f"--resume_from_checkpoint {resume_from}: no such file or directory")
        if os.path.isfile(resume_from):
            traj = resume_from
        elif checkpoint.read_manifest(resume_from) is not None:
            ckpt = resume_from
        elif checkpoint.list_checkpoints(resume_from):
            ckpt = checkpoint.list_checkpoints(resume_from)[-1][1]
        else:
            hint = " (incomplete: it has no manifest.json, the save was interrupted)" if os.path.basename(
                os.path.normpath(resume_from)).startswith((".tmp-", "step_")) else ""
            raise BadInput(f"--resume_from_checkpoint {resume_from}: not a checkpoint{hint}; pass "
                           f"checkpoints/step_<n>, an output dir holding checkpoints/, a trajectory file, or 'auto'")
    if ckpt:
        m = checkpoint.read_manifest(ckpt)
        check_compatible(f"--resume_from_checkpoint {ckpt}", {**m.get("args", {}), "model_name": m.get("model_name"),
                                                              "gguf_file": m.get("gguf_file")}, settings)
        if m["step"] > max_steps:
            raise BadInput(f"--resume_from_checkpoint {ckpt}: at step {m['step']}, past --max_steps {max_steps}")
    if tail is not None:
        header, entries, _, _ = T.read(tail, allow_truncated=True)
        check_compatible(f"--resume_from_checkpoint auto {tail}", header, settings)
        if entries[-1].step > max_steps:
            raise BadInput(f"--resume_from_checkpoint auto: {tail} has {entries[-1].step} steps, "
                           f"more than --max_steps {max_steps}")
    if traj is not None:
        flag = ("--resume_trajectory" if resume_from is None else
                "--resume_from_checkpoint auto:" if resume_from == "auto" else "--resume_from_checkpoint")
        if not os.path.isfile(traj):
            raise BadInput(f"{flag} {traj}: no such file")
        try:
            header, entries, _, _ = T.read(traj, allow_truncated=True)
        except (OSError, T.TrajectoryError) as e:
            raise BadInput(f"{flag} {e}") from None
        if header.get("start_step", 0):
            raise BadInput(f"{flag} {traj}: starts at step {header['start_step']}, not at the base model; "
                           f"resume from the checkpoint it continues instead")
        check_compatible(f"{flag} {traj}", header, settings)
        if len(entries) > max_steps:
            raise BadInput(f"{flag} {traj}: has {len(entries)} steps, more than --max_steps {max_steps}")
        return ResumePlan(ckpt, tail, traj, {k: header.get(k) for k in ("base_model", "base_fingerprint")})
    return ResumePlan(ckpt, tail, traj)


def check_base(p: ResumePlan, base: dict) -> None:
    """BadInput when the plan replays a trajectory from the base model (no checkpoint holds the
    weights) and this run's base weights are not those it was trained from (the header's
    fingerprint, mezo.models.fingerprint); trajectories written before the fingerprint pass."""
    want = (p.trained_from or {}).get("base_fingerprint")
    if p.trajectory and want and want != base["base_fingerprint"]:
        raise BadInput(f"{p.trajectory}: trained from {p.trained_from['base_model']!r} with weights fingerprint {want}; "
                       f"--model_name {base['base_model']!r} has {base['base_fingerprint']}: a resumed run replays "
                       f"onto the same base weights")


# ---------------------------------------------------------------------------- carrying out the plan
@dataclass
class Restored:
    """Where a resumed run stands once its model is loaded."""
    start: int = 0                      # steps done
    skipped: int = 0                    # non-finite steps skipped so far
    replay: list | None = None          # trajectory entries to apply once the engine exists
    source: str | None = None           # the trajectory this run's trajectory.jsonl continues


def restore(p: ResumePlan, ckpt: checkpoint.Checkpointer, metrics) -> Restored:
    """Load the plan's checkpoint shards (resharded to this world size) and its metrics, or read
    the trajectory to replay; the engine does not exist yet (see attach)."""
    if p.checkpoint:
        m, st = ckpt.load_model(p.checkpoint), checkpoint.read_state(p.checkpoint)
        r = Restored(start=int(m["step"]), skipped=int(st.get("skipped_nonfinite", 0)),
                     source=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(p.checkpoint))), T.FILENAME))
        rng = (st.get("rng") or {}).get("torch_cpu_state")
        if rng:
            torch.set_rng_state(torch.frombuffer(bytearray(base64.b64decode(rng)), dtype=torch.uint8))
        resumed = {"checkpoint": p.checkpoint, "step": r.start, "saved_world_size": m["world_size"],
                   "world_size": D.world_size()}
        metrics.restore(st.get("metrics") or {}, resumed, r.skipped)
        log.info("resumed from %s at step %d (saved by %d ranks, now %d)", p.checkpoint, r.start, m["world_size"],
                 D.world_size())
        if p.tail:  # auto: the trajectory's steps after the checkpoint
            _, entries, _, _ = T.read(p.tail, allow_truncated=True)
            tail = [e for e in entries if e.step > r.start]
            if tail:
                r.replay = tail
                metrics.restore_replayed(tail)
                r.skipped += sum(e.skipped for e in tail)
                metrics.data["skipped_nonfinite"] = r.skipped
                resumed["replayed_steps"] = [tail[0].step, tail[-1].step]
                r.start = resumed["step"] = tail[-1].step
                log.info("%s has steps %d..%d beyond the checkpoint: replaying them", p.tail, tail[0].step,
                         tail[-1].step)
            r.source = p.tail
        return r
    if p.trajectory:
        _, entries, _, truncated = T.read(p.trajectory, allow_truncated=True)
        if truncated:
            log.warning("%s: dropped a truncated last line", p.trajectory)
        metrics.restore_replayed(entries)
        r = Restored(start=len(entries), skipped=sum(e.skipped for e in entries), replay=entries, source=p.trajectory)
        metrics.restore({}, {"trajectory": p.trajectory, "step": r.start, "world_size": D.world_size()}, r.skipped)
        return r
    return Restored()


def attach(p: ResumePlan, r: Restored, ckpt: checkpoint.Checkpointer, engine, method: str = "mezo") -> None:
    """Once the engine exists (its method configured, mezo.methods.configure): the checkpoint's
    master shards, then the replay."""
    if p.checkpoint and engine.master_weights:
        ckpt.load_master(engine, p.checkpoint)
    if r.replay is not None:
        t0 = time.time()
        T.replay(engine, r.replay, method)
        log.info("replayed %d steps from %s in %.1fs", len(r.replay), r.source, time.time() - t0)
        r.replay = None

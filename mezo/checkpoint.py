"""Sharded checkpoints (torch.distributed.checkpoint, DCP): save, load, rotation.

Checkpoints go to <output_dir>/checkpoints/step_<n>/. Each is written to
checkpoints/.tmp-step_<n>/ and renamed when complete (manifest.json is written last), so a
half-written checkpoint is never picked up:

    step_<n>/.metadata, __<rank>_0.distcp   model shards ("model.*") and, with master weights,
                                            the fp32 master shards ("master.<param>")
    step_<n>/state.json                     what the trainer needs to continue: metrics so far,
                                            scheduler, data position, RNG / seeds, counters
    step_<n>/manifest.json                  "complete", step, world size, model and the settings
                                            a resumed run must share (mezo.resume.MUST_MATCH)

The engine is flushed before saving, so the shards hold exactly theta. DCP reshards on load,
and MeZO directions do not depend on sharding, so a checkpoint written by N ranks resumes on M.
Which checkpoint to resume from, and whether it fits this run, is mezo/resume.py's.
"""
from __future__ import annotations

import glob
import json
import os
import re
import shutil
import time

import torch

from mezo import distributed as D, trajectory as T
from mezo.errors import CheckpointError
from mezo.telemetry import log, write_json

FORMAT = "mezo-checkpoint"


def read_manifest(path: str) -> dict | None:
    """The manifest of a complete checkpoint folder, else None."""
    try:
        with open(os.path.join(path, "manifest.json")) as f:
            m = json.load(f)
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) and m.get("format") == FORMAT and m.get("complete") else None


def read_state(path: str) -> dict:
    with open(os.path.join(path, "state.json")) as f:
        return json.load(f)


def list_checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """(step, path) of the complete checkpoints in output_dir, oldest first."""
    out = []
    for path in glob.glob(os.path.join(output_dir, "checkpoints", "step_*")):
        m = re.fullmatch(r"step_(\d+)", os.path.basename(path))
        if m and read_manifest(path) is not None:
            out.append((int(m.group(1)), path))
    return sorted(out)


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


class Checkpointer:
    """save(engine, step, ...) and load_*(path) for one run's model; every rank calls them."""

    def __init__(self, output_dir: str, model, model_name: str, keep: int = 0):
        """keep: the newest N checkpoints survive a save (0: all)."""
        self.output_dir, self.model, self.model_name, self.keep = output_dir, model, model_name, keep
        self.root = os.path.join(output_dir, "checkpoints")
        self.main = D.is_main()
        self.last: str | None = None        # the newest checkpoint this run saved or loaded
        self.last_step: int | None = None
        if self.main:
            for tmp in glob.glob(os.path.join(self.root, ".tmp-step_*")):  # leftovers of an interrupted save
                shutil.rmtree(tmp, ignore_errors=True)

    def load_model(self, path: str) -> dict:
        """The model shards of checkpoint `path` (resharded to this world size); returns its manifest."""
        self._load({"model": self.model.state_dict()}, path)
        m = read_manifest(path)
        self.last, self.last_step = path, int(m["step"])
        return m

    def load_master(self, engine, path: str) -> None:
        """The fp32 master shards into the engine (after load_model)."""
        self._load({"master": _master_state(engine, self.model)}, path)
        engine.write_master()

    def _load(self, sd: dict, path: str):
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.api import CheckpointException  # a BaseException
        try:
            dcp.load(sd, checkpoint_id=path)
        except (Exception, CheckpointException) as e:  # noqa: BLE001 - one line for the user
            msg = " ".join(str(e).split())[:300]
            raise CheckpointError(f"--resume_from_checkpoint {path}: cannot load into --model_name "
                                  f"{self.model_name} ({type(e).__name__}: {msg})") from None

    def save(self, engine, step: int, state: dict, settings: dict) -> str:
        """Write step_<step>/ (once per step): the shards, then state.json (the trainer's), then
        the manifest; rotate. Returns the folder."""
        if step == self.last_step:
            return self.last
        import torch.distributed.checkpoint as dcp
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
            write_json(os.path.join(tmp, "state.json"), state)
            write_json(os.path.join(tmp, "manifest.json"), {
                "format": FORMAT, "version": 1, "complete": True, "step": step, "seed": settings["seed"],
                "world_size": D.world_size(), "model_name": settings["model_name"], "gguf_file": settings["gguf_file"],
                "dtype": settings["dtype"], "master_weights": settings["master_weights"],
                "args": dict(settings),
                "trajectory": os.path.abspath(os.path.join(self.output_dir, T.FILENAME)),
                "files": sorted(os.listdir(tmp)) + ["manifest.json"], "time": time.time()})
            if os.path.exists(final):
                shutil.rmtree(final)
            os.rename(tmp, final)
            _fsync_dir(self.root)
            if self.keep:
                for _, old in list_checkpoints(self.output_dir)[:-self.keep]:
                    shutil.rmtree(old, ignore_errors=True)
        D.barrier()
        self.last, self.last_step = final, step
        log.info("checkpoint %s (%.1fs)", final, time.time() - t0)
        return final

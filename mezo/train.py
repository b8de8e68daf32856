"""A run: flags -> Config (mezo/config.py) -> set-up (process group, data, model, FSDP2,
encoder; mezo/context.py) -> the trainer the config names -> its final record. Every trainer
writes the same logs to --output_dir."""
from __future__ import annotations

import os
import sys

import torch

from mezo import backprop, baselines, config, context, distributed as D, errors, linear_probe, telemetry, zo_trainer

TRAINERS = {
    "mezo": zo_trainer.train,          # MeZO: full parameters, LoRA or prefix
    "ft": backprop.train,              # backprop fine-tuning baseline
    "linear_probe": linear_probe.train,
    "zero_shot": baselines.train,      # evaluate only
    "icl": baselines.train,            # in-context learning
}


def run(cfg: config.Config) -> dict:
    ctx = context.build(cfg)
    mem = None
    if cfg.output.memory_logging and ctx.main:
        mem = ctx.memory = telemetry.MemoryLogger(os.path.join(cfg.output.dir, "memory_log.json"), ctx.device,
                                                  cfg.output.memory_interval).start()
    try:
        torch.set_grad_enabled(False)  # forward passes only, except where a trainer enables grad
        return TRAINERS[cfg.train.trainer](ctx)
    except BaseException as e:
        status = getattr(e, "status", "failed")  # "preempted" for errors.Preempted
        if status == "failed":  # why, for whoever reads the file rather than the log
            ctx.metrics.data["error"] = str(e) if isinstance(e, errors.StopRun) else f"{type(e).__name__}: {e}"
        ctx.metrics.save(status)
        raise
    finally:
        if mem:
            mem.stop()


def main(argv=None) -> int:
    cfg = config.parse(argv, D.world_size())
    clean = False
    try:
        run(cfg)
        clean = True
    except errors.BadInput as e:  # found once the data is read (every rank finds it; rank 0 says it)
        return errors.bad_input(str(e)) if D.is_main() else errors.EXIT_BAD_INPUT
    except errors.StopRun as e:  # preempted (75), non-finite step (3), unloadable checkpoint (2)
        return errors.report(e, D.is_main())
    finally:
        D.shutdown(clean)
    return 0


if __name__ == "__main__":
    sys.exit(main())

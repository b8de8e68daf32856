"""A run: flags -> set-up (process group, data, model, FSDP2, encoder; mezo/context.py) -> the
trainer the flags name -> its final record. Every trainer writes the same logs to --output_dir."""
from __future__ import annotations

import os
import sys

import torch

from mezo import backprop, baselines, checkpoint, config, context, distributed as D, linear_probe, telemetry, \
    zo_trainer

TRAINERS = {
    "mezo": zo_trainer.train,          # MeZO: full parameters, LoRA or prefix
    "ft": backprop.train,              # backprop fine-tuning baseline
    "linear_probe": linear_probe.train,
    "zero_shot": baselines.train,      # evaluate only
    "icl": baselines.train,            # in-context learning
}


def trainer_name(args) -> str:
    return "zero_shot" if args.zero_shot else "icl" if args.icl else args.trainer


def run(args) -> dict:
    ctx = context.build(args)
    mem = None
    if args.memory_logging and ctx.main:
        mem = telemetry.MemoryLogger(os.path.join(args.output_dir, "memory_log.json"), ctx.device,
                                     args.memory_interval).start()
    try:
        torch.set_grad_enabled(False)  # forward passes only, except where a trainer enables grad
        return TRAINERS[trainer_name(args)](ctx)
    except BaseException as e:
        ctx.metrics.save(getattr(e, "status", "failed"))  # "preempted" for checkpoint.Preempted
        raise
    finally:
        if mem:
            mem.stop()


def main(argv=None) -> int:
    args = config.parse(argv, D.world_size())
    clean = False
    try:
        run(args)
        clean = True
    except checkpoint.StopRun as e:  # preempted (75), non-finite step (3), unloadable checkpoint (2)
        return checkpoint.report(e)
    finally:
        D.shutdown(clean)
    return 0


if __name__ == "__main__":
    sys.exit(main())

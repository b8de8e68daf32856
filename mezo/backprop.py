"""The backpropagation fine-tuning baseline (`--trainer ft`): the same data stream, loss
(mezo.scoring.example_losses, here with grad enabled), evaluation and logs as MeZO, with
AdamW or SGD, gradient accumulation and a linear warm-up. Works on the full model, on LoRA
adapters (`--use_lora`) and on prefixes (`--prefix_tuning`): only parameters that require
grad are optimised. Under FSDP2 the gradients are reduce-scattered (averaged over ranks) and
the optimizer state is sharded like the parameters.

The model stays in eval mode (no dropout), as in the MeZO loop, and the forwards are the MeZO
loop's (mezo.batches), so the one-process and the FSDP2 runs score the same examples in the
same forwards and log the same step-1 loss bit for bit. The gradients are not bit-identical
across world sizes: each rank accumulates its forwards' gradients, then FSDP2's reduce-scatter
(gloo / NCCL, in the backend's ring order) sums the ranks' partial sums, so the grouping of the
float sums follows the world size. A fixed order would mean gathering every forward's full
gradient on every rank (world x the gradient memory) instead of a reduce-scatter; we keep
FSDP2's. The difference is float rounding (tests/e2e/test_modes.py measures it).

`--dtype fp16` is mixed precision, as the reference's FT baseline (large_models/finetune.sh:
Hugging Face Trainer with --fp16 on weights loaded in fp32): the weights, gradients and Adam
state stay fp32, the forwards and backwards run under torch.autocast in fp16, and the loss is
scaled dynamically (torch.amp.GradScaler, Trainer's defaults: initial scale 2^16, halved on
overflow, doubled after 2000 good steps). A step whose gradients overflow is skipped (no update,
logged as `overflow`) and, as in Trainer, does not advance the learning-rate schedule. Under FSDP2
the overflow check is agreed by all ranks (DTensor reduces GradScaler's found-inf flag).
Evaluation runs on the fp32 weights without autocast, as the reference's final evaluation.
Gradients are clipped to --max_grad_norm (default 1.0, Trainer's max_grad_norm) after unscaling.
"""
from __future__ import annotations

import contextlib
import math
import time

import numpy as np
import torch

from mezo import distributed as D, models, peft_modes
from mezo.batches import BatchStream, global_mean
from mezo.results import finish
from mezo.schedule import warmup_lr_at
from mezo.scoring import example_losses, loss_weight
from mezo.telemetry import log


def make_optimizer(ft, lr: float, weight_decay: float, model, decays=None):
    """AdamW or SGD (a mezo.config.FTConfig) over the trainable parameters; weight decay where
    decays(name) (default: not on biases and norms, models.decays)."""
    decays = decays or models.decays("causal", "ft")
    named = peft_modes.trainable(model)
    groups = [{"params": [p for n, p in named if decays(n)], "weight_decay": weight_decay},
              {"params": [p for n, p in named if not decays(n)], "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if ft.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=ft.momentum)
    return torch.optim.AdamW(groups, lr=lr, betas=(ft.adam_beta1, ft.adam_beta2), eps=ft.adam_epsilon)


def train(run) -> dict:
    """The backprop trainer over a mezo.context.Run."""
    model, enc, splits, metrics, main = run.model, run.enc, run.splits, run.metrics, run.main
    t, ft = run.cfg.train, run.cfg.ft
    run.zero_shot()
    kind = run.task.train_loss  # "classification" or "lm" (--non_diff is MeZO's only: config refuses it here)
    opt = make_optimizer(ft, t.learning_rate, t.weight_decay, model, models.decays(run.cfg.model.task_family, "ft"))
    params = [p for _, p in peft_modes.trainable(model)]
    log.info("backprop fine-tuning (%s) of %d parameter tensors (%d elements), mode %s%s", ft.optimizer,
             len(params), sum(p.numel() for p in params), run.cfg.mode,
             ", fp16 autocast with dynamic loss scaling" if ft.amp else "")
    stream = BatchStream(len(splits.train), t.batch_size, t.gradient_accumulation_steps, t.seed, t.forward_batch_size)
    accum, world = t.gradient_accumulation_steps, D.world_size()
    sync = getattr(model, "set_requires_gradient_sync", None)
    scaler = torch.amp.GradScaler(run.device.type) if ft.amp else None
    autocast = (lambda: torch.autocast(run.device.type, dtype=torch.float16)) if ft.amp else contextlib.nullcontext
    skipped = [0]  # overflowed (skipped) steps so far: the schedule advances on applied steps only

    def step(i: int) -> dict:
        t0 = time.time()
        lr = warmup_lr_at(t.lr_scheduler_type, t.learning_rate, t.max_steps, ft.warmup_steps, i - skipped[0])
        for g in opt.param_groups:
            g["lr"] = lr
        # the objective is the mean over the whole step (all micro-batches and ranks) per sample,
        # or per gold token for "lm", as MeZO's loss; its denominator is known from the data
        # alone, so each forward's sum can be scaled before its backward
        denom = max(1, sum(loss_weight(enc, splits.train[k], kind)
                           for m in range(accum) for k in stream.global_batch(i, m)))
        values, counts = [], []
        forwards = [ids for m in range(accum) for ids in stream.local_forwards(i, m)]
        with torch.enable_grad():
            for k, ids in enumerate(forwards):
                if sync is not None:
                    sync(k == len(forwards) - 1)  # FSDP2: reduce-scatter once per optimizer step
                with autocast():
                    v, c = example_losses(model, enc, [splits.train[j] for j in ids], kind)
                # FSDP2 averages gradients over ranks, hence the factor world
                objective = v.sum() * (world / denom)
                (scaler.scale(objective) if scaler else objective).backward()
                values.append(v.detach().to("cpu", torch.float64))
                counts.extend(c)
        if scaler:
            scaler.unscale_(opt)  # true gradients before clipping; records overflow
        gnorm = None
        if ft.max_grad_norm > 0:
            n = torch.nn.utils.clip_grad_norm_(params, ft.max_grad_norm)  # a DTensor under FSDP2
            gnorm = float(n.full_tensor() if hasattr(n, "full_tensor") else n)
        rec = {"step": i + 1}
        if scaler:
            scale = scaler.get_scale()
            scaler.step(opt)  # skipped when any rank's gradients overflowed
            scaler.update()
            rec["loss_scale"] = scale
            if scaler.get_scale() < scale:  # Trainer's test for a skipped step
                skipped[0] += 1
                rec["overflow"] = True
                run.metrics.data["skipped_overflow"] = skipped[0]
                log.warning("step %d: fp16 gradients overflowed at loss scale %g: step skipped (%d so far)",
                            i + 1, scale, skipped[0])
        else:
            opt.step()
        opt.zero_grad(set_to_none=True)
        loss = global_mean(torch.cat(values), torch.tensor(counts, dtype=torch.float64))
        rec.update(loss=loss, lr=lr, step_time_s=time.time() - t0)
        if gnorm is not None and math.isfinite(gnorm):
            rec["grad_norm"] = gnorm
        return rec

    run.steps("FT", 0, step)
    if main:
        log.info("mean loss over the last steps %.4f", float(np.mean([s["loss"] for s in metrics.data["steps"][-10:]])))
    return finish(run.cfg, model, run.tok, metrics, main)

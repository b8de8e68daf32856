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
"""
from __future__ import annotations

import time

import numpy as np
import torch

from mezo import distributed as D, peft_modes
from mezo.batches import BatchStream, global_mean
from mezo.results import finish
from mezo.schedule import warmup_lr_at
from mezo.scoring import example_losses, loss_weight
from mezo.telemetry import log
from mezo.zo import no_decay


def make_optimizer(ft, lr: float, weight_decay: float, model):
    """AdamW or SGD (a mezo.config.FTConfig) over the trainable parameters; no decay on biases
    and norms."""
    named = peft_modes.trainable(model)
    groups = [{"params": [p for n, p in named if not no_decay(n)], "weight_decay": weight_decay},
              {"params": [p for n, p in named if no_decay(n)], "weight_decay": 0.0}]
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
    opt = make_optimizer(ft, t.learning_rate, t.weight_decay, model)
    params = [p for _, p in peft_modes.trainable(model)]
    log.info("backprop fine-tuning (%s) of %d parameter tensors (%d elements), mode %s", ft.optimizer,
             len(params), sum(p.numel() for p in params), run.cfg.mode)
    stream = BatchStream(len(splits.train), t.batch_size, t.gradient_accumulation_steps, t.seed, t.forward_batch_size)
    accum, world = t.gradient_accumulation_steps, D.world_size()
    sync = getattr(model, "set_requires_gradient_sync", None)
    def step(i: int) -> dict:
        t0 = time.time()
        lr = warmup_lr_at(t.lr_scheduler_type, t.learning_rate, t.max_steps, ft.warmup_steps, i)
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
                v, c = example_losses(model, enc, [splits.train[j] for j in ids], kind)
                # FSDP2 averages gradients over ranks, hence the factor world
                (v.sum() * (world / denom)).backward()
                values.append(v.detach().to("cpu", torch.float64))
                counts.extend(c)
        gnorm = None
        if ft.max_grad_norm > 0:
            n = torch.nn.utils.clip_grad_norm_(params, ft.max_grad_norm)  # a DTensor under FSDP2
            gnorm = float(n.full_tensor() if hasattr(n, "full_tensor") else n)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss = global_mean(torch.cat(values), torch.tensor(counts, dtype=torch.float64))
        rec = {"step": i + 1, "loss": loss, "lr": lr, "step_time_s": time.time() - t0}
        if gnorm is not None:
            rec["grad_norm"] = gnorm
        return rec

    run.steps("FT", 0, step)
    if main:
        log.info("mean loss over the last steps %.4f", float(np.mean([s["loss"] for s in metrics.data["steps"][-10:]])))
    return finish(run.cfg, model, run.tok, metrics, main)

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
FSDP2's. The difference is float rounding (tests/test_modes.py measures it).
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


def make_optimizer(args, model):
    named = peft_modes.trainable(model)
    groups = [{"params": [p for n, p in named if not no_decay(n)], "weight_decay": args.weight_decay},
              {"params": [p for n, p in named if no_decay(n)], "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if args.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=args.learning_rate, momentum=args.momentum)
    return torch.optim.AdamW(groups, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                             eps=args.adam_epsilon)


def loss_kind(args) -> str:
    """The task's differentiable training loss: "classification" or "lm" (--non_diff is MeZO only)."""
    from mezo.tasks import get_task
    if getattr(args, "non_diff", False):
        raise ValueError("--non_diff needs --trainer mezo: a non-differentiable objective has no gradient")
    return getattr(get_task(args.task_name, family=getattr(args, "task_family", "causal")), "train_loss",
                   "classification")


def train(run) -> dict:
    """The backprop trainer over a mezo.context.Run."""
    args, model, tok, enc, splits, metrics, main = run.args, run.model, run.tok, run.enc, run.splits, run.metrics, run.main
    run.zero_shot()
    kind = loss_kind(args)
    opt = make_optimizer(args, model)
    params = [p for _, p in peft_modes.trainable(model)]
    log.info("backprop fine-tuning (%s) of %d parameter tensors (%d elements), mode %s", args.optimizer,
             len(params), sum(p.numel() for p in params), peft_modes.mode_name(args))
    stream = BatchStream(len(splits.train), args.batch_size, args.gradient_accumulation_steps, args.seed,
                         args.forward_batch_size)
    accum, world = args.gradient_accumulation_steps, D.world_size()
    sync = getattr(model, "set_requires_gradient_sync", None)
    bar = None
    if main:
        from tqdm.auto import tqdm
        bar = tqdm(total=args.max_steps, desc="FT", dynamic_ncols=True)
    for step in range(args.max_steps):
        t0 = time.time()
        lr = warmup_lr_at(args, step)
        for g in opt.param_groups:
            g["lr"] = lr
        # the objective is the mean over the whole step (all micro-batches and ranks) per sample,
        # or per gold token for "lm", as MeZO's loss; its denominator is known from the data
        # alone, so each forward's sum can be scaled before its backward
        denom = max(1, sum(loss_weight(enc, splits.train[i], kind)
                           for m in range(accum) for i in stream.global_batch(step, m)))
        values, counts = [], []
        forwards = [ids for m in range(accum) for ids in stream.local_forwards(step, m)]
        with torch.enable_grad():
            for k, ids in enumerate(forwards):
                if sync is not None:
                    sync(k == len(forwards) - 1)  # FSDP2: reduce-scatter once per optimizer step
                v, c = example_losses(model, enc, [splits.train[i] for i in ids], kind)
                # FSDP2 averages gradients over ranks, hence the factor world
                (v.sum() * (world / denom)).backward()
                values.append(v.detach().to("cpu", torch.float64))
                counts.extend(c)
        gnorm = None
        if args.max_grad_norm > 0:
            n = torch.nn.utils.clip_grad_norm_(params, args.max_grad_norm)  # a DTensor under FSDP2
            gnorm = float(n.full_tensor() if hasattr(n, "full_tensor") else n)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss = global_mean(torch.cat(values), torch.tensor(counts, dtype=torch.float64))
        rec = {"step": step + 1, "loss": loss, "lr": lr, "step_time_s": time.time() - t0}
        if gnorm is not None:
            rec["grad_norm"] = gnorm
        metrics.step(rec)
        if bar:
            bar.update(1)
            bar.set_postfix(loss=f"{rec['loss']:.4f}")
        if (step + 1) % args.eval_steps == 0 or step + 1 == args.max_steps:
            metrics.eval(run.evaluate(step + 1))
    if bar:
        bar.close()
    if main:
        log.info("mean loss over the last steps %.4f", float(np.mean([s["loss"] for s in metrics.data["steps"][-10:]])))
    return finish(args, model, tok, metrics, main)

"""The backpropagation fine-tuning baseline (`--trainer ft`): the same data stream, loss
(mezo.scoring.classification_loss, here with grad enabled), evaluation and logs as MeZO, with
AdamW or SGD, gradient accumulation and a linear warm-up. Works on the full model, on LoRA
adapters (`--use_lora`) and on prefixes (`--prefix_tuning`): only parameters that require
grad are optimised. Under FSDP2 the gradients are reduce-scattered (averaged over ranks) and
the optimizer state is sharded like the parameters.

The model stays in eval mode (no dropout), as in the MeZO loop, so the one-process and the
FSDP2 runs take the same steps.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from mezo import distributed as D, peft_modes
from mezo.scoring import loss_terms
from mezo.telemetry import log
from mezo.zo import no_decay


def lr_at(args, step: int) -> float:
    """transformers' get_linear_schedule_with_warmup / get_constant_schedule_with_warmup:
    lr * step / warmup during warm-up, then constant or linear decay to 0 at max_steps."""
    w = args.warmup_steps
    if step < w:
        return args.learning_rate * step / max(1, w)
    if args.lr_scheduler_type == "linear":
        return args.learning_rate * max(0.0, (args.max_steps - step) / max(1, args.max_steps - w))
    return args.learning_rate


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


def run(args, model, tok, enc, splits, metrics, run_eval, main: bool) -> dict:
    from mezo.train import BatchStream  # late: mezo.train imports this module lazily
    kind = loss_kind(args)
    opt = make_optimizer(args, model)
    params = [p for _, p in peft_modes.trainable(model)]
    log.info("backprop fine-tuning (%s) of %d parameter tensors (%d elements), mode %s", args.optimizer,
             len(params), sum(p.numel() for p in params), peft_modes.mode_name(args))
    stream = BatchStream(len(splits.train), args.batch_size, args.gradient_accumulation_steps, args.seed)
    accum = args.gradient_accumulation_steps
    sync = getattr(model, "set_requires_gradient_sync", None)
    bar = None
    if main:
        from tqdm.auto import tqdm
        bar = tqdm(total=args.max_steps, desc="FT", dynamic_ncols=True)
    for step in range(args.max_steps):
        t0 = time.time()
        lr = lr_at(args, step)
        for g in opt.param_groups:
            g["lr"] = lr
        total = torch.zeros(2, dtype=torch.float64)
        with torch.enable_grad():
            for micro in range(accum):
                if sync is not None:
                    sync(micro == accum - 1)  # FSDP2: reduce-scatter once per optimizer step
                batch = [splits.train[i] for i in stream.local_batch(step, micro)]
                loss_sum, count = loss_terms(model, enc, batch, kind)
                # the mean over this micro-batch (samples, or gold tokens for "lm"), averaged over
                # micro-batches; FSDP2 averages the gradients over ranks. For classification
                # (equal counts everywhere) this is the gradient of the global mean loss.
                (loss_sum / (max(count, 1) * accum)).backward()  # every rank: FSDP2 reduce-scatters
                total[0] += float(loss_sum.detach())
                total[1] += count
        gnorm = None
        if args.max_grad_norm > 0:
            n = torch.nn.utils.clip_grad_norm_(params, args.max_grad_norm)  # a DTensor under FSDP2
            gnorm = float(n.full_tensor() if hasattr(n, "full_tensor") else n)
        opt.step()
        opt.zero_grad(set_to_none=True)
        total = D.all_reduce_sum(total)
        rec = {"step": step + 1, "loss": float(total[0] / max(float(total[1]), 1.0)), "lr": lr, "step_time_s": time.time() - t0}
        if gnorm is not None:
            rec["grad_norm"] = gnorm
        metrics.step(rec)
        if bar:
            bar.update(1)
            bar.set_postfix(loss=f"{rec['loss']:.4f}")
        if (step + 1) % args.eval_steps == 0 or step + 1 == args.max_steps:
            metrics.eval(run_eval(step + 1))
    if bar:
        bar.close()
    if main:
        log.info("mean loss over the last steps %.4f", float(np.mean([s["loss"] for s in metrics.data["steps"][-10:]])))
    from mezo.train import finish  # shared with the MeZO loop (train imports this module lazily)
    return finish(args, model, tok, metrics, main)

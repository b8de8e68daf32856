"""The MeZO trainer: resume (checkpoint or trajectory), zero-shot evaluation, MeZO steps with
periodic dev/test evaluation, the final checkpoint and record. Checkpoints, preemption,
trajectory.jsonl and non-finite steps are mezo/checkpoint.py's; the step is mezo/zo.py's."""
from __future__ import annotations

import time

import numpy as np

from mezo import checkpoint
from mezo.batches import BatchStream, make_loss_fn
from mezo.context import Run
from mezo.results import finish
from mezo.schedule import lr_at, step_seed
from mezo.telemetry import log
from mezo.zo import ZOEngine


def loss_kind(args, task) -> str:
    """"non_diff" (--non_diff), else the task's: "classification" (CE over candidates / label
    words) or "lm" (teacher-forced gold continuation); see mezo.scoring.example_losses."""
    return "non_diff" if getattr(args, "non_diff", False) else task.train_loss


def train(run: Run) -> dict:
    args, model, metrics = run.args, run.model, run.metrics
    session = checkpoint.Session(args, model, metrics)
    start = session.resume_model()
    if not start:
        run.zero_shot()
    engine = ZOEngine.from_model(model, dist=args.zo_dist, backend=args.zo_backend, fused=not args.no_fuse,
                                 master_weights=args.use_master)
    log.info("MeZO over %d parameter shards (%s, backend %s, %s sweeps, master weights %s)",
             len(engine.slots), args.zo_dist, engine.backend, "fused" if engine.fused else "plain",
             engine.master_weights)
    session.attach(engine)  # master shards from the checkpoint, or replay of --resume_trajectory
    stream = BatchStream(len(run.splits.train), args.batch_size, args.gradient_accumulation_steps, args.seed,
                         args.forward_batch_size)
    loss_at = make_loss_fn(model, run.enc, run.splits.train, stream, loss_kind(args, run.task))
    bar = None  # closed before any error message, so that the message is the last line
    if run.main:
        from tqdm.auto import tqdm
        bar = tqdm(total=args.max_steps, initial=start, desc="MeZO", dynamic_ncols=True)
    n = args.zo_num_samples
    try:
        for step in range(start, args.max_steps):
            t0 = time.time()
            lr = lr_at(args, step)
            seeds = [step_seed(args.seed, step, j, n) for j in range(n)]
            grads, losses = engine.step(lambda: loss_at(step), seeds, lr, args.zo_eps, args.weight_decay)
            skipped = session.check(engine, step, grads, losses)  # NaN/inf: skip (--skip_nonfinite) or stop
            lp, lm = losses[0]
            rec = {"step": step + 1, "loss": float(np.mean([(a + b) / 2 for a, b in losses])), "loss_plus": lp,
                   "loss_minus": lm, "projected_grad": float(np.mean(grads)), "lr": lr,
                   "step_time_s": time.time() - t0, "seeds": seeds}
            if skipped:
                rec["skipped_nonfinite"] = True
            metrics.step(rec)
            if bar:
                bar.update(1)
                bar.set_postfix(loss=f"{rec['loss']:.4f}", g=f"{rec['projected_grad']:.3g}")
            if (step + 1) % args.eval_steps == 0 or step + 1 == args.max_steps:
                engine.flush()
                metrics.eval(run.evaluate(step + 1))
            session.after_step(engine, step, seeds, grads, lr, skipped)  # trajectory, checkpoint, preemption
        engine.flush()
        session.finish(engine)  # final checkpoint
    finally:
        if bar:
            bar.close()
    return finish(args, model, run.tok, metrics, run.main)

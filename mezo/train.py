"""The MeZO training loop: flags -> data -> model (FSDP2 when distributed) -> zero-shot eval ->
MeZO steps with periodic dev/test evaluation -> final evaluation, all logged to --output_dir."""
from __future__ import annotations

import os
import platform
import sys
import time

import numpy as np
import torch

from mezo import checkpoint, config, distributed as D, models, peft_modes, telemetry
from mezo.batches import BatchStream, make_loss_fn
from mezo.evaluation import evaluate
from mezo.results import finish, headline
from mezo.schedule import lr_at, step_seed
from mezo.scoring import make_encoder
from mezo.splits import build_splits
from mezo.tasks import get_task
from mezo.telemetry import log
from mezo.zo import ZOEngine


def loss_kind(args, task) -> str:
    """"non_diff" (--non_diff), else the task's: "classification" (CE over candidates / label
    words) or "lm" (teacher-forced gold continuation); see mezo.scoring.example_losses."""
    return "non_diff" if getattr(args, "non_diff", False) else task.train_loss


def experiment_config(args, model, world: int, device) -> dict:
    import transformers
    total, trainable = models.count_params(model)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return {"args": vars(args), "task": args.task_name, "model_name": args.model_name, "mode": peft_modes.mode_name(args),
            "resolved_model": models.resolve(args.model_name, args.gguf_file)[0],
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "transformers": transformers.__version__},
            "world_size": world, "device": f"{device} {name}", "dtype": args.dtype,
            "master_weights": args.use_master, "num_params": total, "num_trainable_params": trainable,
            "command": " ".join(sys.argv)}


def run(args) -> dict:
    device = D.init()
    world, main = D.world_size(), D.is_main()
    if main:
        os.makedirs(args.output_dir, exist_ok=True)
    D.barrier()
    telemetry.setup_logging(args.output_dir, main)
    if main:
        telemetry.write_json(os.path.join(args.output_dir, "run_config.json"),
                             {k: v for k, v in vars(args).items() if k != "use_master"})
    torch.manual_seed(args.seed)

    family = getattr(args, "task_family", "causal")
    task = get_task(args.task_name, family=family, **({} if family == "mlm" else {"text_column": args.text_column}))
    hub = (args.dataset, args.dataset_config) if args.dataset else (None, None)
    splits, train_rows = build_splits(args, task, hub)  # reference sampling; LM-BFF k-shot for mlm
    log.info("task %s: %d train, %d dev, %d test (data: %s)", task.name, len(splits.train), len(splits.dev),
             len(splits.test), args.data_dir or "hub")

    t_load = time.time()
    model, tok = models.load(args.model_name, args.gguf_file, args.dtype, device, family)
    model = peft_modes.prepare(args, model, tok)  # LoRA / prefix / frozen (linear probe), before sharding
    if D.launched_distributed():
        models.shard(model, device, args.fsdp_version)
    log.info("model %s loaded in %.1fs (%s, world size %d%s)", args.model_name, time.time() - t_load,
             args.dtype, world, ", FSDP2" if D.launched_distributed() else "")
    if main:
        telemetry.write_json(os.path.join(args.output_dir, "experiment_config.json"),
                             experiment_config(args, model, world, device))

    mem = None
    if args.memory_logging and main:
        mem = telemetry.MemoryLogger(os.path.join(args.output_dir, "memory_log.json"), device,
                                     args.memory_interval).start()
    metrics = telemetry.Metrics(os.path.join(args.output_dir, "training_metrics.json") if main else None,
                                every=args.log_steps)
    enc = make_encoder(tok, model, args)  # OPT first token 0, context length, mlm / causal
    torch.set_grad_enabled(False)

    def run_eval(step):
        rec = {"step": step, "dev": evaluate(model, enc, splits.dev, args.eval_batch_size),
               "test": evaluate(model, enc, splits.test, args.eval_batch_size)}
        log.info("step %d: dev %s test %s", step, rec["dev"], rec["test"])
        return rec

    bar = None  # the progress bar; closed before an error message so that the message is the last line
    try:
        if args.zero_shot or args.icl:  # baselines: evaluate, write the logs, exit (mezo/baselines.py)
            from mezo.baselines import run_baseline
            return run_baseline(args, task, model, enc, splits, train_rows, metrics, main)
        # checkpoints, resume, preemption, trajectory.jsonl, non-finite steps: mezo/checkpoint.py
        session = checkpoint.Session(args, model, metrics) if args.trainer == "mezo" else None
        start = session.resume_model() if session else 0
        if not args.no_initial_eval and not start:
            zs = {"test": evaluate(model, enc, splits.test, args.eval_batch_size)}
            metrics.data["zero_shot"] = zs
            metrics.save()
            log.info("zero-shot test %s", zs["test"])
            if main:
                print(f"zero-shot test {headline(zs['test'])}", flush=True)

        if args.trainer != "mezo":  # baselines: backprop fine-tuning, linear probing
            from mezo import backprop, linear_probe
            trainer = backprop if args.trainer == "ft" else linear_probe
            return trainer.run(args, model, tok, enc, splits, metrics, run_eval, main)
        engine = ZOEngine.from_model(model, dist=args.zo_dist, backend=args.zo_backend, fused=not args.no_fuse,
                                     master_weights=args.use_master)
        log.info("MeZO over %d parameter shards (%s, backend %s, %s sweeps, master weights %s)",
                 len(engine.slots), args.zo_dist, engine.backend, "fused" if engine.fused else "plain",
                 engine.master_weights)
        session.attach(engine)  # master shards from the checkpoint, or replay of --resume_trajectory
        stream = BatchStream(len(splits.train), args.batch_size, args.gradient_accumulation_steps, args.seed,
                             args.forward_batch_size)
        loss_at = make_loss_fn(model, enc, splits.train, stream, loss_kind(args, task))
        if main:
            from tqdm.auto import tqdm
            bar = tqdm(total=args.max_steps, initial=start, desc="MeZO", dynamic_ncols=True)
        n = args.zo_num_samples
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
                metrics.eval(run_eval(step + 1))
            session.after_step(engine, step, seeds, grads, lr, skipped)  # trajectory, checkpoint, preemption
        engine.flush()
        session.finish(engine)  # final checkpoint
        if bar:
            bar.close()
        return finish(args, model, tok, metrics, main)
    except BaseException as e:
        if bar:
            bar.close()
        metrics.save(getattr(e, "status", "failed"))  # "preempted" for checkpoint.Preempted
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

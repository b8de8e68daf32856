"""The MeZO trainer: resume (mezo/resume.py), zero-shot evaluation, MeZO steps (mezo/zo.py) with
periodic dev/test evaluation, and after each step its trajectory line, a checkpoint every
--save_steps (mezo/checkpoint.py) and the preemption check (mezo/preemption.py); at the end the
final checkpoint and record. A non-finite step is never applied: it is skipped
(--skip_nonfinite) or stops the run with exit 3."""
from __future__ import annotations

import base64
import math
import os
import time

import numpy as np
import torch

from mezo import checkpoint, distributed as D, methods, models, preemption, resume, trajectory as T
from mezo.batches import BatchStream, make_loss_fn
from mezo.context import Run
from mezo.errors import EXIT_PREEMPTED, NonFinite, Preempted
from mezo.faults import Faults
from mezo.results import finish
from mezo.schedule import lr_at, step_seed
from mezo.telemetry import log, update_json
from mezo.zo import ZOEngine


def loss_kind(non_diff: bool, task) -> str:
    """"non_diff" (--non_diff), else the task's: "classification" (CE over candidates / label
    words) or "lm" (teacher-forced gold continuation); see mezo.scoring.example_losses."""
    return "non_diff" if non_diff else task.train_loss


def schedule_name(engine) -> str:
    """How a step runs, in words (training.log)."""
    if engine.numerics == "stochastic":
        return ("dual forward ([rows; rows], +eps / -eps halves)" if engine.fused else "one forward per sign") + \
            ", update swept and rounded stochastically"
    return "fused sweeps" if engine.fused else "plain sweeps"


def record_engine(run: Run, engine, failures: list[str]) -> None:
    """experiment_config.json (and memory_log.json) gain the engine's memory and kernel backend:
    param_bytes (the weights), engine_state_bytes (what the engine keeps beyond them: fp32
    masters), zo_backend_selected and zo_backend_fallback (the parity self-check's failures)."""
    param_bytes = sum(p.numel() * p.element_size() for p in run.model.parameters())  # global shapes
    state = int(D.all_reduce_sum(torch.tensor([engine.state_bytes()], dtype=torch.float64)).item())
    info = {"numerics": engine.numerics, "param_bytes": param_bytes, "engine_state_bytes": state,
            "engine_state_fraction": state / param_bytes if param_bytes else 0.0,
            "zo_backend_selected": engine.backend, "zo_backend_fallback": failures or None}
    if run.memory is not None:
        run.memory.info.update(info)
    if run.main:
        update_json(os.path.join(run.cfg.output.dir, "experiment_config.json"), info)


def finite(grads, losses) -> bool:
    return all(math.isfinite(v) for v in [*grads, *(x for pair in losses for x in pair)])


class Loop:
    """What the loop carries between steps: the checkpointer, the trajectory log, the counters."""

    def __init__(self, run: Run):
        self.run, self.cfg = run, run.cfg
        c = self.cfg
        self.ckpt = checkpoint.Checkpointer(c.output.dir, run.model, c.model.name, c.checkpoint.save_total_limit)
        self.settings = c.settings()
        self.faults = Faults()
        self.traj = None
        self.skipped = 0
        preemption.install()

    def start(self) -> resume.Restored:
        r = resume.restore(self.cfg.checkpoint.plan, self.ckpt, self.run.metrics)
        self.skipped = r.skipped
        if self.run.main:
            path = os.path.join(self.cfg.output.dir, T.FILENAME)
            # the header names the base model and fingerprints its weights: replay refuses another base
            self.traj = T.continue_log(path, r.source, r.start, T.header({**self.settings, **self.run.base},
                                                                         D.world_size()))
        return r

    def state(self, step: int) -> dict:
        """state.json of the checkpoint at `step`."""
        t, per_step = self.cfg.train, self.cfg.train.batch_size * self.cfg.train.gradient_accumulation_steps
        n = self.cfg.zo.num_samples
        return {
            "step": step, "seed": t.seed, "skipped_nonfinite": self.skipped,
            "data_position": {"step": step, "examples_consumed": step * per_step, "batch_size": t.batch_size,
                              "gradient_accumulation_steps": t.gradient_accumulation_steps, "data_seed": t.seed},
            # directions need no RNG state: step_seed(seed, step, j, n) is counter-based; the global
            # torch generator (restored on resume) is saved for anything else that draws from it
            "rng": {"seed": t.seed, "direction_seeds": "mezo.schedule.step_seed(seed, step, j, n)",
                    "next_seeds": [step_seed(t.seed, step, j, n) for j in range(n)],
                    "torch_cpu_state": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode()},
            "scheduler": {"type": t.lr_scheduler_type, "learning_rate": t.learning_rate, "max_steps": t.max_steps,
                          "next_lr": lr_at(t.lr_scheduler_type, t.learning_rate, t.max_steps, step)},
            "metrics": self.run.metrics.data}

    def save(self, engine, step: int) -> str:
        return self.ckpt.save(engine, step, self.state(step), self.settings)

    def skip_or_stop(self, engine, step: int, grads, losses) -> bool:
        """After engine.step: True when the step is skipped (non-finite, --skip_nonfinite);
        raises NonFinite without the flag. The update of a non-finite step is never applied."""
        self.faults.corrupt(step, grads, losses)
        if finite(grads, losses):
            return False
        engine.drop_update()
        lp, lm = losses[0]
        what = f"step {step}: non-finite loss or projected gradient (L+={lp}, L-={lm}, g={grads})"
        last = self.ckpt.last or "none"
        c = self.cfg.checkpoint
        if c.skip_nonfinite:
            self.skipped += 1
            self.run.metrics.data["skipped_nonfinite"] = self.skipped
            if self.skipped <= c.max_skipped_steps:
                log.warning("%s: skipped (--skip_nonfinite), %d skipped so far", what, self.skipped)
                return True
            # a run that keeps producing NaN has diverged: its weights and accuracy mean nothing
            steps = [r["step"] for r in self.run.metrics.data["steps"] if r.get("skipped_nonfinite")] + [step]
            raise NonFinite(f"{what}: {self.skipped} non-finite steps skipped (steps {', '.join(map(str, steps))}), "
                            f"more than --max_skipped_steps {c.max_skipped_steps}: the run diverged (try a smaller "
                            f"--learning_rate or --zo_eps); last good checkpoint: {last}")
        log.error("%s; last good checkpoint: %s", what, last)
        raise NonFinite(f"{what}; last good checkpoint: {last} (resume with --resume_from_checkpoint; "
                        f"--skip_nonfinite skips such steps)")

    def after_step(self, engine, step: int, seeds, grads, lr: float, skipped: bool) -> None:
        """Trajectory line, periodic checkpoint, preemption check (all ranks agree)."""
        c = self.cfg
        if self.traj:
            self.traj.write(step, seeds, grads, lr, c.zo.eps, c.train.weight_decay, skipped)
        self.faults.after_trajectory_line(step)
        if c.checkpoint.save_steps and step % c.checkpoint.save_steps == 0 and step < c.train.max_steps:
            self.save(engine, step)
        if preemption.requested():
            self.save(engine, step)
            sig = preemption.signal_name()
            self.run.metrics.data["preempted"] = {"signal": sig, "step": step, "checkpoint": self.ckpt.last}
            self.run.metrics.save("preempted")
            raise Preempted(f"preempted ({sig or 'signal on another rank'}) after step {step}; checkpoint "
                            f"{self.ckpt.last}; exit {EXIT_PREEMPTED}: rerun with --resume_from_checkpoint auto")

    def finish(self, engine) -> None:
        self.save(engine, self.cfg.train.max_steps)
        if self.traj:
            self.traj.close()


def train(run: Run) -> dict:
    cfg, model, metrics = run.cfg, run.model, run.metrics
    t, zo = cfg.train, cfg.zo
    loop = Loop(run)
    restored = loop.start()
    start = restored.start
    if not start:
        run.zero_shot()
    share = t.batch_size // D.world_size()
    engine = ZOEngine.from_model(model, dist=zo.dist, backend=zo.backend, fused=zo.fused, numerics=zo.numerics,
                                 decay=models.decays(cfg.model.task_family, "mezo"),
                                 row_groups=share // t.forward_batch_size, generator=zo.generator)
    selector = methods.configure(engine, model, zo.method, zo.blocks)
    failures = engine.check_backend() if engine.needs_check else []
    record_engine(run, engine, failures)
    log.info("MeZO over %d parameter shards (%s, numerics %s, backend %s, %s; method %s%s)", len(engine.slots),
             zo.dist, engine.numerics, engine.backend,
             methods.FZOO_SCHEDULE if zo.method == "fzoo" else schedule_name(engine), zo.method,
             f", {zo.blocks} of {len(selector.blocks)} blocks per step" if selector else "")
    resume.attach(cfg.checkpoint.plan, restored, loop.ckpt, engine, zo.method)  # master shards, replay
    stream = BatchStream(len(run.splits.train), t.batch_size, t.gradient_accumulation_steps, t.seed,
                         t.forward_batch_size)
    loss_at = make_loss_fn(model, run.enc, run.splits.train, stream, loss_kind(zo.non_diff, run.task),
                           batch_shape=engine.numerics == "stochastic")
    n = zo.num_samples
    last = {}  # what the step leaves for after_step: its seeds, gradients, lr, skipped

    def step(i: int) -> dict:
        t0 = time.time()
        lr = lr_at(t.lr_scheduler_type, t.learning_rate, t.max_steps, i)
        seeds = [step_seed(t.seed, i, j, n) for j in range(n)]
        if zo.method == "fzoo":
            grads, losses, sigma = methods.fzoo_step(engine, lambda: loss_at(i), seeds, lr, zo.eps, t.weight_decay,
                                                     batched_fn=lambda: loss_at.batched(i))
        else:
            grads, losses = engine.step(lambda: loss_at(i), seeds, lr, zo.eps, t.weight_decay,
                                        pair_fn=lambda: loss_at.pair(i))
        skipped = loop.skip_or_stop(engine, i + 1, grads, losses)
        lp, lm = losses[0]
        if zo.method == "fzoo":  # losses are (L_i, L0): the step's loss is the unperturbed one
            head = {"loss": lm, "loss_perturbed": [a for a, _ in losses], "loss_std": sigma}
        else:
            head = {"loss": float(np.mean([(a + b) / 2 for a, b in losses])), "loss_plus": lp, "loss_minus": lm}
        rec = {"step": i + 1, **head, "projected_grad": float(np.mean(grads)), "lr": lr,
               "step_time_s": time.time() - t0, "time_forward_s": engine.timing["forward"],
               "time_sweep_s": engine.timing["sweep"], "seeds": seeds}
        if selector:
            rec["blocks"] = selector.chosen(seeds[0]) if n == 1 else [selector.chosen(s) for s in seeds]
        if skipped:
            rec["skipped_nonfinite"] = True
        last.update(seeds=seeds, grads=grads, lr=lr, skipped=skipped)
        return rec

    run.steps("MeZO", start, step, before_eval=engine.flush,
              after_step=lambda done: loop.after_step(engine, done, **last))
    engine.flush()
    loop.finish(engine)  # final checkpoint
    return finish(cfg, model, run.tok, metrics, run.main)

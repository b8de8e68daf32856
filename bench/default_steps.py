"""The default run's MeZO steps, set up for the benches that time them in process
(bench_pm_in_forward, bench_kernel_threads, bench_heap, bench_embedding_rows): SmolLM2-135M-Instruct (the offline package, fp32),
its SST-2 batches, and an engine with the default run's numerics (stochastic, dual forward)."""
from __future__ import annotations

import os

import torch

from mezo import config, models, zo
from mezo.batches import BatchStream, make_loss_fn
from mezo.schedule import step_seed
from mezo.scoring import make_encoder
from mezo.splits import build_splits
from mezo.tasks import get_task


def default_steps(name: str, backend: str | None = None):
    """(cfg, model, loss_fn, engine) of the default run, outputs under outputs/<name>; backend:
    the engine's kernels (default: the run's --zo_backend). Leaves autograd off."""
    cfg = config.parse(["--output_dir", os.path.join("outputs", name)])
    t, zc = cfg.train, cfg.zo
    task = get_task(cfg.data.task_name, family="causal", text_column=None)
    splits, _ = build_splits(cfg.data, task)
    model, tok = models.load(cfg.model.name, cfg.model.gguf_file, "fp32", torch.device("cpu"))
    torch.set_grad_enabled(False)
    enc = make_encoder(tok, model, cfg.model.max_length)
    stream = BatchStream(len(splits.train), t.batch_size, t.gradient_accumulation_steps, t.seed, t.forward_batch_size)
    loss = make_loss_fn(model, enc, splits.train, stream, "classification", batch_shape=True)
    eng = zo.ZOEngine.from_model(model, dist=zc.dist, backend=backend or zc.backend, numerics="stochastic",
                                 row_groups=t.batch_size // t.forward_batch_size)
    return cfg, model, loss, eng


def run_step(cfg, loss, eng, i: int):
    """The default run's step i (its seed, learning rate, eps and weight decay; the dual forward's
    two losses from loss.pair): what ZOEngine.step returns. Its update is left pending, as in the
    run (eng.flush() applies it, eng.drop_update() discards it)."""
    t, zc = cfg.train, cfg.zo
    return eng.step(lambda: loss(i), [step_seed(t.seed, i, 0, 1)], t.learning_rate, zc.eps, t.weight_decay,
                    pair_fn=lambda: loss.pair(i))

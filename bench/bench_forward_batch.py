"""The cost of --forward_batch_size on the real default model: one training loss (a global batch
of 16 SST-2 examples, the default run's) computed in forwards of 16, 4, 2 and 1 examples.

SmolLM2-135M-Instruct (the offline package), the default run's 1000 sampled training examples,
fp32, inference mode. In one process, interleaved batch by batch (machine noise hits every size
alike); the median over the timed batches of each size, and its ratio to forwards of 16 (what
one process ran before the forward batch existed).

    python bench/bench_forward_batch.py                 # 8 batches x 2 rounds (the first round is warm-up)
    python bench/bench_forward_batch.py --sizes 16,8,4,2 --batches 12

--dual times what the size costs the default numerics instead: the default run's MeZO steps
(its batches and step seeds, lr 0, which leaves the weights' bits) with the dual forward's rows
in the groups that forwards of each size would have had (mezo.zo.Perturbation), each step once
per size, the order alternating; the median of the dual forward's time (`time_forward_s`).

    python bench/bench_forward_batch.py --dual --sizes 2,4,8,16 --batches 8
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mezo import config, models  # noqa: E402
from mezo.scoring import example_losses, make_encoder  # noqa: E402
from mezo.splits import build_splits  # noqa: E402
from mezo.tasks import get_task  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="16,4,2,1", help="forward batch sizes (each must divide --batch_size)")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--json", default=None, help="also write the figures here")
    p.add_argument("--dual", action="store_true", help="time the default numerics' dual forward instead")
    a = p.parse_args()
    sizes = [int(s) for s in a.sizes.split(",")]
    if a.dual:
        return dual(sizes, a)
    cfg = config.parse(["--output_dir", os.path.join("outputs", "bench_forward_batch")])
    task = get_task(cfg.data.task_name, family="causal", text_column=None)
    splits, _ = build_splits(cfg.data, task)
    model, tok = models.load(cfg.model.name, cfg.model.gguf_file, "fp32", torch.device("cpu"))
    enc = make_encoder(tok, model, cfg.model.max_length)
    rng = np.random.RandomState(0)
    batches = [[splits.train[i] for i in rng.permutation(len(splits.train))[:a.batch_size]] for _ in range(a.batches)]
    times: dict[int, list[float]] = {fb: [] for fb in sizes}
    losses: dict[int, list[float]] = {fb: [] for fb in sizes}
    with torch.inference_mode():
        for r in range(a.rounds):
            for b in batches:
                for fb in sizes:
                    t0 = time.perf_counter()
                    vals = [example_losses(model, enc, b[i:i + fb], "classification")[0] for i in range(0, len(b), fb)]
                    dt = time.perf_counter() - t0
                    if r:  # round 0 warms up
                        times[fb].append(dt)
                        losses[fb].append(float(torch.cat(vals).double().mean()))
    base = statistics.median(times[sizes[0]])
    rows = []
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"| forward batch | forwards per loss | median loss time (s) | vs forwards of {sizes[0]} | max |loss - loss({sizes[0]})| |")
    print("|---:|---:|---:|---:|---:|")
    for fb in sizes:
        med = statistics.median(times[fb])
        dev = max(abs(x - y) for x, y in zip(losses[fb], losses[sizes[0]]))
        rows.append({"forward_batch_size": fb, "median_s": med, "ratio": med / base, "max_loss_diff": dev})
        print(f"| {fb} | {a.batch_size // fb} | {med:.3f} | {med / base:.2f}x | {dev:.1e} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"model": cfg.model.name, "batch_size": a.batch_size, "rows": rows}, f, indent=1)


def dual(sizes: list[int], a) -> None:
    """The dual forward of the default run's steps with the rows of each half in groups of each size."""
    from bench.default_steps import default_steps
    from mezo.schedule import step_seed
    cfg, _, loss, eng = default_steps("bench_forward_batch", "compile")
    t, zc = cfg.train, cfg.zo
    times: dict[int, list[float]] = {fb: [] for fb in sizes}
    losses: dict[int, list[tuple]] = {fb: [] for fb in sizes}
    warmup = 2
    for i in range(warmup + a.batches):
        for fb in (sizes if i % 2 == 0 else sizes[::-1]):
            eng.row_groups = t.batch_size // fb
            _, pm = eng.step(lambda: loss(i), [step_seed(t.seed, i, 0, 1)], 0.0, zc.eps, 0.0,
                             pair_fn=lambda: loss.pair(i))
            if i >= warmup:
                times[fb].append(eng.timing["forward"])
                losses[fb].append(pm[0])
    base = statistics.median(times[sizes[0]])
    rows = []
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"| forward batch | row groups per half | median dual forward (s) | vs forwards of {sizes[0]} | "
          f"median of per-step ratios | max |L+/- - L+/-({sizes[0]})| |")
    print("|---:|---:|---:|---:|---:|---:|")
    for fb in sizes:
        med = statistics.median(times[fb])
        per = statistics.median(x / y for x, y in zip(times[fb], times[sizes[0]]))
        dev = max(abs(x - y) for p, q in zip(losses[fb], losses[sizes[0]]) for x, y in zip(p, q))
        rows.append({"forward_batch_size": fb, "median_forward_s": med, "ratio": med / base, "per_step_ratio": per,
                     "max_loss_diff": dev, "forward_s": times[fb]})
        print(f"| {fb} | {t.batch_size // fb} | {med:.3f} | {med / base:.2f}x | {per:.3f}x | {dev:.1e} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"model": cfg.model.name, "batch_size": t.batch_size, "threads": torch.get_num_threads(),
                       "torch": torch.__version__, "dual": True, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()

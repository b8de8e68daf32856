"""An embedding's looked-up rows in the dual forward: one kernel call (the engine's pm_rows) vs
one call per run of nearby rows (the previous code, kept here as the baseline).

Both give the same bits (checked here on every timed step: the same losses). In one process,
each step index runs once with each version on the same batch and seed, which goes first
alternating from one index to the next; reported: the median step of each and the median of the
per-step ratios, and the kernel calls per step the embedding made.

  default   the default run's steps (SmolLM2-135M-Instruct fp32, its SST-2 batches and seeds,
            numerics stochastic): 49152 x 576 table, tied to the LM head
  16m/124m  bench_step.py's OPT-like models, batch 16 x 64 of random ids (tied 50272-row table)

    OMP_NUM_THREADS=2 python bench/bench_embedding_rows.py --json bench/results/embedding_rows.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mezo import zo  # noqa: E402

RUN_COST = 1 << 14  # the previous code's merge gap: elements a kernel call cost about as much as generating


def runs_embedding(self, leaf, ids):
    """The previous Perturbation._embedding: one pm call per run of looked-up rows, rows closer
    than RUN_COST elements merged into one run."""
    whole = self._whole(leaf)
    W = whole["weight"]
    D = W.shape[1]
    rows, inv = torch.unique(ids, sorted=True, return_inverse=True)
    r, gap = rows.tolist(), max(1, RUN_COST // D)
    runs, first = [], 0
    for i in range(1, len(r) + 1):
        if i == len(r) or r[i] - r[i - 1] > gap or (r[i] - r[first] + 1) * D > zo.CHUNK:
            runs.append(r[first:i])
            first = i
    plus, minus = [], []
    for run in runs:
        p, m = self._pair(leaf, whole, "weight", run[0] * D, (run[-1] + 1) * D)
        at = torch.tensor([x - run[0] for x in run], device=W.device)
        plus.append(p.view(-1, D).index_select(0, at))
        minus.append(m.view(-1, D).index_select(0, at) if self.dual else None)
    tables = [torch.cat(plus)] + ([torch.cat(minus)] if self.dual else [])
    outs = [F.embedding(inv[s], tables[h]) for h, s in self._parts(ids.shape[0], False)]
    return outs[0] if len(outs) == 1 else torch.cat(outs)


ENGINE_EMBEDDING = zo.Perturbation._embedding
VERSIONS = {"one call (pm_rows)": ENGINE_EMBEDDING, "a call per run": runs_embedding}


def counted(version):
    """The version's embedding, counting its kernel calls into calls[0]."""
    calls = [0]

    def embedding(self, leaf, ids):
        kern = self.kern
        count = lambda f: lambda *a, **k: calls.__setitem__(0, calls[0] + 1) or f(*a, **k)  # noqa: E731
        self.kern = zo.Kernels(kern.sweep, count(kern.pm), kern.update, count(kern.pm_rows))
        try:
            return version(self, leaf, ids)
        finally:
            self.kern = kern
    return embedding, calls


def compare(label, step, n_steps, warmup) -> dict:
    """step(i) -> (L+, L-) of step index i with the embedding installed on zo.Perturbation."""
    fns = {name: counted(v) for name, v in VERSIONS.items()}
    names = list(fns)
    times = {n: [] for n in names}
    calls = {n: [] for n in names}
    for i in range(warmup + n_steps):
        losses = {}
        for name in (names if i % 2 == 0 else names[::-1]):
            emb, c = fns[name]
            zo.Perturbation._embedding = emb
            c[0] = 0
            t0 = time.perf_counter()
            losses[name] = step(i)
            dt = time.perf_counter() - t0
            if i >= warmup:
                times[name].append(dt)
                calls[name].append(c[0])
        zo.Perturbation._embedding = ENGINE_EMBEDDING
        assert len(set(losses.values())) == 1, f"{label} step {i}: the versions' losses differ: {losses}"
        print(f"{label} step {i}: " + ", ".join(f"{n} {times[n][-1]:.3f}s" if i >= warmup else n for n in names),
              flush=True)
    new, old = names
    return {"model": label, **{f"{n} step s": statistics.median(times[n]) for n in names},
            **{f"{n} calls per step": statistics.median(calls[n]) for n in names},
            "ratio one call / per run (median of per-step ratios)":
                statistics.median(a / b for a, b in zip(times[new], times[old])), "steps": n_steps}


def default_model(a) -> dict:
    from bench.default_steps import default_steps, run_step
    cfg, _, loss, eng = default_steps("bench_embedding_rows")

    def step(i):
        _, ls = run_step(cfg, loss, eng, i)
        eng.drop_update()  # every version starts each step index from the same theta
        return ls[0]
    return compare("SmolLM2-135M (default run)", step, a.steps, a.warmup)


def synthetic(size, a) -> dict:
    from bench.bench_step import build
    from bench.reference import pair_loss
    model = build(size)
    ids = torch.randint(4, model.config.vocab_size, (16, 64), generator=torch.Generator().manual_seed(0))
    eng = zo.ZOEngine.from_model(model, numerics="stochastic")

    def step(i):
        with torch.no_grad():
            _, ls = eng.step(None, [1000 + i], 1e-7, 1e-3, 0.0, pair_fn=lambda: pair_loss(model, ids))
        eng.drop_update()
        return ls[0]
    return compare(f"OPT-like {size}", step, a.steps, a.warmup)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["default", "16m", "124m"], choices=["default", "16m", "124m"])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    rows = [default_model(a) if m == "default" else synthetic(m, a) for m in a.models]
    print(f"\n{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}; median of {a.steps} "
          f"steps per version after {a.warmup} warm-up, alternating\n")
    new, old = VERSIONS
    print(f"| model | {new}: step (s) | calls | {old}: step (s) | calls | ratio, step by step |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r[new + ' step s']:.3f} | {r[new + ' calls per step']:.0f} | {r[old + ' step s']:.3f} | "
              f"{r[old + ' calls per step']:.0f} | {r['ratio one call / per run (median of per-step ratios)']:.3f} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"threads": torch.get_num_threads(), "torch": torch.__version__, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()

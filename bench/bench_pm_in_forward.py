"""Where the dual forward's perturbation time goes on the real default model: the same kernel
(theta + eps z and theta - eps z from one z, `zo._pm_kernel` as the engine compiles it) timed
inside real MeZO steps and alone, on the model's own weights.

    OMP_NUM_THREADS=2 python bench/bench_pm_in_forward.py --json bench/results/pm_in_forward.json

SmolLM2-135M-Instruct (the offline package, fp32), the default run's SST-2 batches and step
seeds, numerics stochastic. Four figures, ns per element of the 134.5M trainable parameters:

  in the step     every call the dual forward makes (Perturbation.pm: the Python around the
                  kernel included), timed with perf_counter inside real steps
  alone, cold     the same calls, in the forward's order and sizes, on the model's own weights
                  (each read from memory once per pass, as in a step), nothing else running
  alone, hot      the same calls on one leaf's weight again and again (cache-resident)
  with GEMMs      "alone, cold", each call followed by the GEMMs the forward makes with its
                  outputs (each group's real tokens x (plus or minus)^T)

The update sweep (`zo._update_kernel` over every local shard in CHUNK-sized calls) likewise: in
the step (the step's `time_sweep_s`) and alone, the same calls on the model's weights with lr 0
and coefficient 0 (theta - 0 * (0 * z + 0 * theta) = theta: the weights keep their bits).

The difference between "in the step" and the others is what the generator's cost per element
(bench/bench_noise.py, BENCHMARKS.md section 9) does not show.
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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.default_steps import default_steps, run_step  # noqa: E402
from mezo import zo  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=4, help="timed steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (kernel compilation)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of the kernel-alone passes")
    p.add_argument("--json", default=None, help="also write the figures here")
    a = p.parse_args()

    cfg, model, loss, eng = default_steps("bench_pm_in_forward")
    t, zc = cfg.train, cfg.zo
    numel = sum(s.local.numel() for s in eng.slots)

    calls: list[tuple[str, int, int, tuple]] = []  # (name, lo, hi, weight shape) of one step's pm calls
    spent = {"s": 0.0}
    inner = zo.Perturbation.pm

    def timed_pm(self, name, w, lo, hi):
        t0 = time.perf_counter()
        out = inner(self, name, w, lo, hi)
        spent["s"] += time.perf_counter() - t0
        calls.append((name, lo, hi, tuple(w.shape)))
        return out

    zo.Perturbation.pm = timed_pm
    rows = []
    for i in range(a.warmup + a.steps):
        calls.clear()
        spent["s"] = 0.0
        t0 = time.perf_counter()
        run_step(cfg, loss, eng, i)
        dt = time.perf_counter() - t0
        if i >= a.warmup:
            rows.append({"step_s": dt, "forward_s": eng.timing["forward"], "sweep_s": eng.timing["sweep"],
                         "pm_s": spent["s"], "pm_calls": len(calls), "pm_elements": sum(h - lo for _, lo, h, _ in calls)})
        print(f"step {i}: {dt:.3f} s, dual forward {eng.timing['forward']:.3f} s of which pm {spent['s']:.3f} s "
              f"({len(calls)} calls)", flush=True)
    zo.Perturbation.pm = inner

    # the kernel alone, on the model's weights, in the order and sizes of the last step's calls
    params = dict(model.named_parameters())
    kern = zo.kernels(eng.backend).pm
    eps = torch.tensor(zc.eps, dtype=torch.float32)
    keys = torch.tensor(zo.noise.keys(1, "w"), dtype=torch.int32)
    work = [(params[n].detach().reshape(-1)[lo:hi], torch.tensor(lo, dtype=torch.int32), shape)
            for n, lo, hi, shape in calls]
    n_el = sum(w.numel() for w, _, _ in work)
    hot_w, hot_lo, _ = max(work, key=lambda x: x[0].numel())
    groups = t.batch_size // t.forward_batch_size
    rows_per_group = max(1, round(217 / groups))  # the default run's 217 real tokens per loss (BENCHMARKS 1.1)
    x_of = {shape[1]: torch.randn(rows_per_group, shape[1]) for _, _, shape in work if len(shape) == 2}

    def one_pass(mode: str) -> float:
        spent_k = 0.0
        for w, lo, shape in work:
            k0 = time.perf_counter()
            if mode == "hot":
                kern(hot_w, hot_lo, keys, eps, dist=zc.dist, both=True, generator=zc.generator)
                spent_k += time.perf_counter() - k0
                continue
            plus, minus = kern(w, lo, keys, eps, dist=zc.dist, both=True, generator=zc.generator)
            spent_k += time.perf_counter() - k0
            if mode == "gemm" and len(shape) == 2 and w.numel() % shape[1] == 0:
                for _ in range(groups):
                    torch.mm(x_of[shape[1]], plus.view(-1, shape[1]).t())
                    torch.mm(x_of[shape[1]], minus.view(-1, shape[1]).t())
        total = n_el if mode != "hot" else len(work) * hot_w.numel()
        return spent_k / total * 1e9

    upd = zo.kernels(eng.backend).update
    zero, cu0 = torch.tensor(0.0), torch.tensor([0.0])

    def update_pass() -> float:
        t0 = time.perf_counter()
        for s in eng.slots:
            for c0 in range(0, s.local.numel(), zo.CHUNK):
                c1 = min(c0 + zo.CHUNK, s.local.numel())
                upd(s.local[c0:c1], torch.tensor(s.start + c0, dtype=torch.int32), keys[None], cu0, zero, zero, keys,
                    dist=zc.dist, n_update=1, sr=False, generator=zc.generator)
        return (time.perf_counter() - t0) / numel * 1e9

    before = [s.local.clone() for s in eng.slots[:3]]
    alone = {m: statistics.median(one_pass(m) for _ in range(a.rounds)) for m in ("cold", "hot", "gemm")}
    alone["update_alone"] = statistics.median(update_pass() for _ in range(a.rounds))
    assert all(torch.equal(b, s.local) for b, s in zip(before, eng.slots))  # lr 0: the weights kept their bits
    alone["update_in_step"] = statistics.median(r["sweep_s"] / numel * 1e9 for r in rows)
    in_step = statistics.median(r["pm_s"] / r["pm_elements"] * 1e9 for r in rows)
    med = {k: statistics.median(r[k] for r in rows) for k in ("step_s", "forward_s", "sweep_s", "pm_s")}
    where = platform.processor() or platform.machine()
    print(f"\n{where}, {torch.get_num_threads()} threads, torch {torch.__version__}, backend {eng.backend}, "
          f"generator {zc.generator}; {numel / 1e6:.1f}M trainable, {len(work)} pm calls per step "
          f"({n_el / 1e6:.1f}M elements); medians of {a.steps} steps / {a.rounds} rounds\n")
    print(f"step {med['step_s']:.3f} s = dual forward {med['forward_s']:.3f} s (pm {med['pm_s']:.3f} s of it) "
          f"+ update sweep {med['sweep_s']:.3f} s\n")
    print("| kernel | ns / element |")
    print("|---|---:|")
    for label, v in (("pm: in the step", in_step), ("pm: alone, cold", alone["cold"]), ("pm: alone, hot", alone["hot"]),
                     ("pm: alone, cold, with the forward's GEMMs between calls", alone["gemm"]),
                     ("update sweep: in the step", alone["update_in_step"]),
                     ("update sweep: alone (the same calls)", alone["update_alone"])):
        print(f"| {label} | {v:.2f} |")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"model": cfg.model.name, "numel": numel, "threads": torch.get_num_threads(), "device": where,
                       "backend": eng.backend, "generator": zc.generator, "steps": rows, "medians_s": med,
                       "pm_ns_per_element": {"in_step": in_step, **alone}}, fh, indent=1)


if __name__ == "__main__":
    main()

"""What a serial perturbation/update kernel costs a real MeZO step: the engine's compiled kernels
(a parallel loop) against the same kernels compiled serial, side by side in one process.

    OMP_NUM_THREADS=2 python bench/bench_kernel_threads.py --json bench/results/kernel_threads.json

inductor decides whether a dynamic-shape CPU kernel gets a parallel (OpenMP) loop from the size
of its first call (no loop when a thread's share is under cpp.min_chunk_size = 512 elements),
and its FX graph cache keys on neither that size nor the decision: a kernel first called on a
few hundred elements (a test's tiny model, a norm weight) stays serial for that process and
for every later one that finds it in the cache. That is how this machine's default run got a
serial update sweep (its CPU time over wall time in `ZOEngine._update_sweep`: 0.99 with 2
threads; 1.98 once compiled afresh). The engine now compiles with `mezo.zo.COMPILE_OPTIONS`
(cpp.dynamic_threads: a parallel loop whatever the first size, tests/unit/test_zo.py).

The "serial" table is the same three kernels with cpp.min_chunk_size set past any size, i.e.
the code inductor generates after a small first call, so that both tables compile in one
process whatever the cache holds. Every step (batch and seed) runs once with each table, the
order alternating (A B, B A, A B, ...), so neither the batches' lengths nor the machine's drift
favours one table.

SmolLM2-135M-Instruct (the offline package, fp32), the default run's SST-2 batches, step seeds
and numerics (stochastic, dual forward). Reported: the median step, forward and update-sweep
seconds with each table, the median of their ratios step by step, and each table's CPU time
over wall time in its kernels (spinning OpenMP threads count too: 1.0 is not reached serial).
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


def tables() -> dict[str, zo.Kernels]:
    """"engine": the engine's own kernels; "serial": the same functions as inductor compiles
    them after a small first call (no parallel loop)."""
    engine = zo.kernels("compile")  # also the engine's inductor settings (mezo.zo._compiled)
    serial = lambda fn: torch.compile(fn, dynamic=True, fullgraph=True,  # noqa: E731
                                      options={"cpp.min_chunk_size": 1 << 60})
    return {"engine": engine, "serial": zo.Kernels(serial(zo._sweep_kernel), serial(zo._pm_kernel),
                                                   serial(zo._update_kernel), serial(zo._pm_rows_kernel))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=6, help="timed steps per table")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per table first (compilation)")
    p.add_argument("--json", default=None, help="also write the figures here")
    a = p.parse_args()

    cfg, _, loss, eng = default_steps("bench_kernel_threads", "compile")

    table = tables()
    in_kernels = {name: [0.0, 0.0] for name in table}  # name -> [wall, cpu] inside kernel calls

    def timed(name: str, fn):
        def call(*args, **kwargs):
            w0, c0 = time.perf_counter(), time.process_time()
            out = fn(*args, **kwargs)
            in_kernels[name][0] += time.perf_counter() - w0
            in_kernels[name][1] += time.process_time() - c0
            return out
        return call

    wrapped = {name: zo.Kernels(*(timed(name, f) for f in (k.sweep, k.pm, k.update, k.pm_rows))) for name, k in table.items()}
    current = {"name": "engine"}
    zo.kernels = lambda backend: wrapped[current["name"]]  # the engine and its Perturbation look it up per use

    rows = {name: [] for name in table}
    # every step index runs once with each table (the same batch: a step's forward cost depends on
    # its batch's tokens), which table goes first alternating from one index to the next
    names = list(table)
    plan = [(name, i) for i in range(a.warmup + a.steps) for name in (names if i % 2 == 0 else names[::-1])]
    for n_done, (name, i) in enumerate(plan):
        current["name"] = name
        if n_done == 2 * a.warmup:
            for v in in_kernels.values():
                v[:] = [0.0, 0.0]
        t0 = time.perf_counter()
        run_step(cfg, loss, eng, i)
        eng.flush()  # this step's update swept with this step's table
        dt = time.perf_counter() - t0
        print(f"step {i} ({name}): {dt:.3f} s", flush=True)
        if n_done >= 2 * a.warmup:
            rows[name].append({"step_s": dt, "forward_s": eng.timing["forward"], "sweep_s": dt - eng.timing["forward"]})

    med = {name: {k: statistics.median(r[k] for r in rs) for k in ("step_s", "forward_s", "sweep_s")}
           for name, rs in rows.items()}
    # the ratio per step (the same batch under both tables), then its median
    ratio = {k: statistics.median(e[k] / s[k] for e, s in zip(rows["engine"], rows["serial"])) for k in med["engine"]}
    cpu_per_wall = {name: (c / w if w else 0.0) for name, (w, c) in in_kernels.items()}
    where = platform.processor() or platform.machine()
    print(f"\n{where}, {torch.get_num_threads()} threads, torch {torch.__version__}; medians of {a.steps} steps "
          f"per table, alternating\n")
    print("| kernels | step (s) | forward (s) | update sweep (s) | CPU / wall in the kernels |")
    print("|---|---:|---:|---:|---:|")
    for name in table:
        m = med[name]
        print(f"| {name} | {m['step_s']:.3f} | {m['forward_s']:.3f} | {m['sweep_s']:.3f} | {cpu_per_wall[name]:.2f} |")
    print(f"| engine / serial, step by step (median) | {ratio['step_s']:.3f} | {ratio['forward_s']:.3f} | "
          f"{ratio['sweep_s']:.3f} | |")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"model": cfg.model.name, "threads": torch.get_num_threads(), "device": where,
                       "torch": torch.__version__, "steps": rows, "medians_s": med, "ratio": ratio,
                       "kernel_cpu_per_wall": cpu_per_wall}, fh, indent=1)


if __name__ == "__main__":
    main()

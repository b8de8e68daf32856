"""Cold compile time of the engine's CPU kernels, and their speed, with the engine's inductor
options against inductor's default realize_opcount_threshold, side by side.

    OMP_NUM_THREADS=2 python bench/bench_compile.py --json bench/results/compile.json

What a fresh machine (or a fresh inductor cache) pays before its first MeZO step: each kernel
is generated and compiled once per (dtype, flags) combination, and the default run needs the
pm kernel (the dual forward's theta +/- eps z) and the update sweep.

Compile time: each (kernel, options) pair in a process of its own with an empty inductor cache
(so neither a cached graph nor an already built library serves it), after a trivial compile
that pays inductor's one-off CPU-capability check (reported as "isa_check_s"); the time of the
kernel's first call on a CHUNK-sized tensor.

Speed: in one process, both compiled versions of every kernel on the same CHUNK-sized tensors,
alternating call by call, ns per element (median over --rounds); and whether both versions
give the same bits as each other and as the eager function.

The options compared: "engine" = mezo.zo.COMPILE_OPTIONS; "inlined" = the same without
realize_opcount_threshold (inductor's default: nodes of up to that many ops are inlined into
every user instead of becoming buffers).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

KERNELS = ("pm", "update", "update_bf16_sr", "sweep_reference")


def options(which: str) -> dict:
    from mezo import zo
    opts = dict(zo.COMPILE_OPTIONS)
    if which == "inlined":
        opts.pop("realize_opcount_threshold", None)
    return opts


def case(kernel: str, n: int):
    """(eager function, args, kwargs, the tensors it writes in place) of one kernel call as the
    engine makes it, on n elements at global index 0."""
    import torch
    from mezo import noise, zo
    g = torch.Generator().manual_seed(0)
    k = torch.tensor(noise.keys(1, "w"), dtype=torch.int32)
    i0 = torch.tensor(0, dtype=torch.int32)
    theta = torch.randn(n, generator=g)
    f32 = lambda v: torch.tensor(v, dtype=torch.float32)  # noqa: E731
    if kernel == "pm":
        return zo._pm_kernel, (theta, i0, k, f32(1e-3)), dict(dist="gaussian", both=True), []
    if kernel in ("update", "update_bf16_sr"):
        x = theta if kernel == "update" else theta.bfloat16()
        ksr = torch.tensor(noise.keys(1, "w#sr"), dtype=torch.int32)
        return (zo._update_kernel, (x, i0, k[None], f32([0.5]), f32(1e-5), f32(0.0), ksr),
                dict(dist="gaussian", n_update=1, sr=kernel != "update"), [x])
    # the reference numerics' fused sweep: restore the last perturbation, update, perturb again
    return (zo._sweep_kernel, (theta, theta, i0, k, f32(1e-3), k[None], f32([0.5]), f32(1e-5), f32(0.0),
                               k, f32(1e-3)),
            dict(dist="gaussian", rounding=False, restore=True, n_update=1, perturb=True, write_out=False,
                 share_z=True), [theta])


def compile_once(kernel: str, which: str, n: int) -> dict:
    """In a fresh process with an empty inductor cache (the caller set TORCHINDUCTOR_CACHE_DIR)."""
    import torch
    from mezo import zo
    zo.kernels("compile")  # the engine's global inductor / dynamo settings
    t = time.perf_counter()
    torch.compile(lambda x: x * 2 + 1, dynamic=True)(torch.randn(64))
    isa = time.perf_counter() - t
    fn, args, kw, _ = case(kernel, n)
    compiled = torch.compile(fn, dynamic=True, fullgraph=True, options=options(which))
    t = time.perf_counter()
    compiled(*args, **kw)
    return {"isa_check_s": isa, "compile_s": time.perf_counter() - t}


def outputs(fn, kernel: str, n: int):
    import torch
    f, args, kw, written = case(kernel, n)
    out = fn(*args, **kw)
    got = [o for o in (out if isinstance(out, tuple) else (out,)) if isinstance(o, torch.Tensor)]
    return got + written


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kernels", nargs="+", default=list(KERNELS), choices=KERNELS)
    p.add_argument("--rounds", type=int, default=21, help="timed calls per kernel and version")
    p.add_argument("--json", default=None)
    p.add_argument("--_compile_once", nargs=2, metavar=("KERNEL", "OPTIONS"), help=argparse.SUPPRESS)
    a = p.parse_args()
    from mezo import zo
    n = zo.CHUNK
    if a._compile_once:
        print(json.dumps(compile_once(*a._compile_once, n)))
        return

    report = {"command": "python bench/bench_compile.py " + " ".join(sys.argv[1:]),
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "threads": os.environ.get("OMP_NUM_THREADS"), "elements": n,
              "date": time.strftime("%Y-%m-%d %H:%M"), "options": {w: options(w) for w in ("engine", "inlined")},
              "kernels": {}}
    for kernel in a.kernels:
        row = report["kernels"][kernel] = {}
        for which in ("inlined", "engine"):
            with tempfile.TemporaryDirectory(prefix="bench_compile_") as cache:
                env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache)
                r = subprocess.run([sys.executable, __file__, "--_compile_once", kernel, which],
                                   env=env, capture_output=True, text=True, check=True)
            row[which] = json.loads(r.stdout.strip().splitlines()[-1])
            print(f"{kernel:16s} {which:8s} cold compile {row[which]['compile_s']:6.1f} s "
                  f"(capability check {row[which]['isa_check_s']:.1f} s)", flush=True)

    import torch
    zo.kernels("compile")
    for kernel in a.kernels:
        row = report["kernels"][kernel]
        fn = case(kernel, n)[0]
        versions = {w: torch.compile(fn, dynamic=True, fullgraph=True, options=options(w)) for w in ("inlined", "engine")}
        want = outputs(fn, kernel, n)
        same = {w: all(torch.equal(x, y) for x, y in zip(outputs(c, kernel, n), want)) for w, c in versions.items()}
        calls = {w: case(kernel, n) for w in versions}
        times = {w: [] for w in versions}
        for r in range(a.rounds):
            for w in (("inlined", "engine") if r % 2 == 0 else ("engine", "inlined")):
                _, args, kw, _ = calls[w]
                t = time.perf_counter()
                versions[w](*args, **kw)
                times[w].append(time.perf_counter() - t)
        for w in versions:
            row[w].update(ns_per_element=statistics.median(times[w]) / n * 1e9, bits_equal_eager=same[w])
        row["speed_ratio_engine_over_inlined"] = statistics.median(
            e / i for e, i in zip(times["engine"], times["inlined"]))
        print(f"{kernel:16s} ns/element inlined {row['inlined']['ns_per_element']:.3f} engine "
              f"{row['engine']['ns_per_element']:.3f} (ratio {row['speed_ratio_engine_over_inlined']:.3f}); "
              f"bits equal to eager: {same}", flush=True)
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()

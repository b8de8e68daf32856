"""The cost of one z evaluation per element, per generator and distribution, on CPU.

The kernel is the engine's sweep reduced to one z: read x, add eps * z, write x
(`x.copy_(x + eps * noise.z_range(start, n, k, dist, generator))`), torch.compile'd the way
mezo/zo.py compiles its sweep (dynamic shapes, fullgraph); and the engine's own update kernel
with one direction (the default generator), compiled and native (mezo/native.py: hand-written C,
`--zo_backend native`), side by side. Sizes:

  4m        one tensor of mezo.zo.CHUNK elements (one kernel call)
  smollm2   the trainable parameters of the default model, SmolLM2-135M (134,515,008 elements in
            the shapes of its 273 tensors: embeddings 49152 x 576, 30 layers of q/k/v/o, gate/up/
            down and two norms, the final norm), each swept in CHUNK-sized calls as the engine does

In one process per thread count, interleaved round by round (machine noise hits every
generator alike); the figure is the median over rounds of the wall time per element, next to the
minimum (the least disturbed round) and the CPU time per element (all threads).

    python bench/bench_noise.py                          # 1 and 2 threads, both sizes, 7 rounds
    python bench/bench_noise.py --threads 2 --sizes 4m --rounds 11
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mezo import native, noise, zo  # noqa: E402

SMOLLM2_NUMEL = 134_515_008


def smollm2_shapes() -> list[tuple[str, int]]:
    """(name, numel) of SmolLM2-135M's trainable tensors (hidden 576, 30 layers, 3 KV heads of 64,
    MLP 1536, vocabulary 49152, tied embeddings)."""
    h, kv, mlp, layers, vocab = 576, 192, 1536, 30, 49152
    out = [("model.embed_tokens.weight", vocab * h)]
    for i in range(layers):
        p = f"model.layers.{i}."
        out += [(p + "self_attn.q_proj.weight", h * h), (p + "self_attn.k_proj.weight", kv * h),
                (p + "self_attn.v_proj.weight", kv * h), (p + "self_attn.o_proj.weight", h * h),
                (p + "mlp.gate_proj.weight", mlp * h), (p + "mlp.up_proj.weight", mlp * h),
                (p + "mlp.down_proj.weight", h * mlp), (p + "input_layernorm.weight", h),
                (p + "post_attention_layernorm.weight", h)]
    out.append(("model.norm.weight", h))
    assert sum(n for _, n in out) == SMOLLM2_NUMEL
    return out


def sweep_kernel(x, start, k, eps, dist: str, generator: str):
    x.copy_(x + eps * noise.z_range(start, x.numel(), k, dist, generator))


def engine_update(backend: str):
    """The engine's update kernel of `backend` with one direction and no weight decay: x <- x - 1 *
    (-eps z + 0 x), in place (two multiplies and two adds more than the sweep kernel)."""
    update = zo.kernels(backend).update
    one, zero = torch.tensor(1.0), torch.tensor(0.0)

    def run(x, start, k, eps, dist, generator):
        update(x, start, k[None], -eps[None], one, zero, k, dist=dist, n_update=1, sr=False, generator=generator)
    return run


def child(args) -> list[dict]:
    torch.set_num_threads(args.threads)  # before compiling: inductor bakes the thread count in
    from torch._inductor import config as inductor_config
    inductor_config.emulate_precision_casts = True  # as mezo.zo._compiled_kernel
    kernels = {"sweep (compile)": torch.compile(sweep_kernel, dynamic=True, fullgraph=True)}
    if "update" in args.kernels:
        kernels["update (compile)"] = engine_update("compile")
        if native.available():
            kernels["update (native)"] = engine_update("native")
    eps = torch.tensor(1e-3)
    sizes = {}
    for size in args.sizes:
        shapes = [("w", zo.CHUNK)] if size == "4m" else smollm2_shapes()
        flat = torch.zeros(sum(n for _, n in shapes))
        calls, off = [], 0
        for name, n in shapes:
            k = torch.tensor(noise.keys(1, name), dtype=torch.int32)
            for c0 in range(0, n, zo.CHUNK):  # the engine's chunking
                c1 = min(c0 + zo.CHUNK, n)
                calls.append((flat[off + c0: off + c1], torch.tensor(c0, dtype=torch.int32), k))
            off += n
        sizes[size] = (flat, calls)
    # the engine's kernels run the default generator only (native: nothing else)
    cases = [(kn, g, d) for kn in kernels for g in noise.GENERATORS for d in noise.DISTRIBUTIONS
             if (kn.startswith("sweep") and "sweep" in args.kernels) or g == noise.DEFAULT_GENERATOR]
    for kn, g, d in cases:  # compile (and warm) every case on every size
        for _, calls in sizes.values():
            for x, s, k in calls[:3]:
                kernels[kn](x, s, k, eps, d, g)
    times = {(kn, g, d, size): ([], []) for kn, g, d in cases for size in sizes}
    for r in range(args.rounds):
        for kn, g, d in cases[r % len(cases):] + cases[:r % len(cases)]:
            for size, (flat, calls) in sizes.items():
                kernel = kernels[kn]
                c0, t0 = time.process_time(), time.perf_counter()
                for x, s, k in calls:
                    kernel(x, s, k, eps, d, g)
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                times[(kn, g, d, size)][0].append(wall / flat.numel() * 1e9)
                times[(kn, g, d, size)][1].append(cpu / flat.numel() * 1e9)
    return [{"size": size, "elements": sizes[size][0].numel(), "calls": len(sizes[size][1]), "threads": args.threads,
             "kernel": kn, "generator": g, "dist": d, "ns_per_element_median": statistics.median(w),
             "ns_per_element_min": min(w), "cpu_ns_per_element_median": statistics.median(c)}
            for (kn, g, d, size), (w, c) in times.items()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--sizes", default="4m,smollm2")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--kernels", default="sweep,update",
                    help="sweep: x + eps z compiled, every generator; update: the engine's update kernel, "
                         "compiled and native (hand-written C), the default generator")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "noise.json"))
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.sizes = [s for s in args.sizes.split(",") if s]
    if args.child:
        args.threads = args.threads[0]
        print(json.dumps(child(args)))
        return
    rows, load = [], [os.getloadavg()]
    for t in args.threads:  # one process per thread count: the compiled kernels fix it
        r = subprocess.run([sys.executable, __file__, "--child", "--threads", str(t), "--sizes", ",".join(args.sizes),
                            "--rounds", str(args.rounds), "--kernels", args.kernels], capture_output=True, text=True, check=True,
                           env={**os.environ, "OMP_NUM_THREADS": str(t)})
        rows += json.loads(r.stdout.strip().splitlines()[-1])
        load.append(os.getloadavg())
    print("| size | threads | kernel | generator | z | ns/element (median) | min | CPU ns/element |")
    print("|---|---:|---|---|---|---:|---:|---:|")
    for row in rows:
        print(f"| {row['size']} | {row['threads']} | {row['kernel']} | {row['generator']} | {row['dist']} | "
              f"{row['ns_per_element_median']:.3f} | {row['ns_per_element_min']:.3f} | {row['cpu_ns_per_element_median']:.3f} |")
    print(f"load average (1 min) before / after each thread count: {[round(l[0], 2) for l in load]}")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                   "torch": torch.__version__, "rounds": args.rounds, "load_average_1min": [l[0] for l in load],
                   "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()

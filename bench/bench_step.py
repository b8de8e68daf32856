"""One MeZO step vs two plain forwards, on CPU, for OPT-like models with random weights.

For each size, in one process and interleaved round by round (so machine noise hits every method
alike), it times:

  2 forwards   two forward passes + LM loss under inference_mode: the floor for any MeZO step
  stochastic   mezo.zo.ZOEngine.step, numerics "stochastic" (the default): the previous update swept
               over the weights, then one dual forward of [batch; batch] in which each leaf builds
               theta +/- eps z from one z; 2 z evaluations per element per step
               (--also_backend B: also "stochastic (B)", the same engine with B's kernels)
  in place     ZOEngine.step, numerics "reference": fused in-place sweeps (2 per step, 3 z
               evaluations per element), the previous default in fp32
  reference    the reference's step (bench/reference.py): 4 sweeps, torch.manual_seed + one
               torch.normal per parameter per sweep

and reports the median step time of each divided by the median of "2 forwards", with the process's
C allocator (the run's, jemalloc, through `bash setup_reproduction.sh python`; glibc's malloc maps
each block over 32 MB afresh, and on a VM first touches of fresh pages then weigh on the step's
larger blocks: BENCHMARKS.md section 1.2).

    bash setup_reproduction.sh python bench/bench_step.py   # as the run: 0.2M, 16M, 124M; batch 16 x 64
    python bench/bench_step.py                          # the same with glibc's malloc
    python bench/bench_step.py --sizes 16m --rounds 5
    python bench/bench_step.py --methods stochastic       # only the default numerics beside 2 forwards
    python bench/bench_step.py --methods stochastic --also_backend compile   # native vs compiled kernels
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.reference import pair_loss, reference_step, zo_loss  # noqa: E402
from mezo import zo  # noqa: E402
from mezo.context import allocator  # noqa: E402

# OPT-like configs: hidden, layers, heads, ffn, vocab (124m is facebook/opt-125m's shape)
SIZES = {"0.2m": (32, 2, 4, 128, 4096), "16m": (256, 4, 4, 1024, 50272), "124m": (768, 12, 12, 3072, 50272)}


METHODS = ["2 forwards", "stochastic", "in place", "reference"]


def build(size: str) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM, OPTConfig
    h, n, heads, ffn, vocab = SIZES[size]
    cfg = OPTConfig(hidden_size=h, num_hidden_layers=n, num_attention_heads=heads, ffn_dim=ffn, vocab_size=vocab,
                    word_embed_proj_dim=h, max_position_embeddings=2048, dropout=0.0, attention_dropout=0.0)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg).eval()


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench(size: str, args) -> dict:
    model = build(size)
    n_params = sum(p.numel() for p in model.parameters())
    ids = torch.randint(4, model.config.vocab_size, (args.batch_size, args.seq_len),
                        generator=torch.Generator().manual_seed(0))
    engine = zo.ZOEngine.from_model(model, backend=args.backend, numerics="stochastic")
    seeds = iter(range(1, 10 ** 9))
    methods = {"2 forwards": lambda: (zo_loss(model, ids).item(), zo_loss(model, ids).item())}
    main_backend = engine.backend

    def stochastic(backend):
        def run():
            engine.backend = backend  # every backend gives the same bits: one engine, one model
            return engine.step(lambda: zo_loss(model, ids).item(), [next(seeds)], 1e-7, 1e-3, 0.0,
                               pair_fn=lambda: pair_loss(model, ids))
        return run

    if "stochastic" in args.methods:
        methods["stochastic"] = stochastic(main_backend)
        if args.also_backend:
            methods[f"stochastic ({args.also_backend})"] = stochastic(args.also_backend)
    if "in place" in args.methods:  # the in-place engines leave a perturbation pending: own weights
        inplace_model = copy.deepcopy(model)
        inplace = zo.ZOEngine.from_model(inplace_model, backend=args.backend, numerics="reference")
        methods["in place"] = lambda: inplace.step(lambda: zo_loss(inplace_model, ids).item(), [next(seeds)],
                                                   1e-7, 1e-3, 0.0)
    if "reference" in args.methods:
        ref_model = copy.deepcopy(model)
        methods["reference"] = lambda: reference_step(ref_model, ids, next(seeds))
    for fn in methods.values():  # warm-up: kernel compilation, allocator
        for _ in range(args.warmup):
            fn()
    times = {m: [] for m in methods}
    for _ in range(args.rounds):
        for m, fn in methods.items():
            times[m].append(timed(fn))
    med = {m: statistics.median(t) for m, t in times.items()}
    row = {"size": size, "params": n_params, "backend": main_backend, "allocator": allocator(),
           "methods in the process": list(methods),
           **{f"{m} s": med[m] for m in methods}, **{f"{m} / 2 fwd": med[m] / med["2 forwards"] for m in methods}}
    print(json.dumps(row), flush=True)
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    ap.add_argument("--batch_size", type=int, default=16)
    ap.add_argument("--seq_len", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--backend", default="auto", choices=["auto", "native", "compile", "eager"])
    ap.add_argument("--also_backend", default=None, choices=["native", "compile", "eager"],
                    help="also time the stochastic step with these kernels ('stochastic (<backend>)', same engine)")
    ap.add_argument("--methods", nargs="+", default=METHODS[1:], choices=METHODS[1:],
                    help="the methods timed beside '2 forwards' in the process (each holds its own model "
                         "copy and memory peaks, which disturb the others through the allocator: BENCHMARKS 1.2)")
    ap.add_argument("--output", default=None, help="also write the rows as JSON here")
    args = ap.parse_args()
    rows = [bench(s, args) for s in args.sizes]
    print(f"\nmachine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"allocator {rows[0]['allocator']}; "
          f"batch {args.batch_size} x {args.seq_len}, median of {args.rounds} interleaved rounds\n")
    names = [m for m in rows[0]["methods in the process"] if m != "2 forwards"]
    print("| model | params | 2 forwards (s) | " + " | ".join(f"{m} (s)" for m in names) + " | "
          + " | ".join(f"{m} / 2 fwd" for m in names) + " |")
    print("|---|---:|---:|" + "---:|" * (2 * len(names)))
    for r in rows:
        print(f"| OPT-like {r['size']} | {r['params'] / 1e6:.1f}M | {r['2 forwards s']:.4f} | "
              + " | ".join(f"{r[m + ' s']:.4f}" for m in names) + " | "
              + " | ".join(f"{r[m + ' / 2 fwd']:.2f}x" for m in names) + " |")
    if args.output:
        with open(args.output, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()

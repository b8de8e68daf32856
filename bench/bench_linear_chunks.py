"""What the chunk size of a big Linear costs the dual forward: theta +/- eps z built for a chunk of
the weight's rows (mezo.zo._pm_kernel, compiled as the engine compiles it), then every piece of the
batch multiplied by it into its columns of the output (mm out=, as mezo.zo.Perturbation._linear),
for the heads of the default model and of OPT-125M, with the weight whole or in chunks of rows.

    OMP_NUM_THREADS=2 python bench/bench_linear_chunks.py --json bench/results/linear_chunks.json

Shapes: SmolLM2-135M's tied head (49152 x 576) on the last position of 32 rows ([16 rows; 16
rows], 4 groups of 4 per half, as the default run's dual forward); OPT-125M's (50272 x 768) on
every position of [16 x 64; 16 x 64] (bench_step.py's synthetic batch). One process, each chunk
size once per round, the order alternating, the median of --rounds rounds after one warm-up. Also
checked: every chunk size gives the whole weight's bits (BLAS sums each row alike from 256 rows).
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
from mezo import noise, zo  # noqa: E402

SHAPES = {  # name -> (N, K, rows per piece, positions per row, pieces)
    "SmolLM2-135M head, last position": (49152, 576, 4, 1, 8),
    "OPT-125M head, every position": (50272, 768, 16, 64, 2),
    "OPT-like 16M head (bench_step.py), every position": (50272, 256, 16, 64, 2),
}


def product(W, x, pieces, rows, per, pm, k, eps):
    N, K = W.shape
    y = x.new_empty(x.shape[0], N)
    for r0 in range(0, N, per):
        r1 = min(N, r0 + per)
        w = pm(W.reshape(-1)[r0 * K:r1 * K], torch.tensor(r0 * K, dtype=torch.int32), k, eps,
               dist="gaussian", both=True)
        for p in range(pieces):
            r = slice(p * rows, (p + 1) * rows)
            torch.mm(x[r], w[p * 2 // pieces].view(r1 - r0, K).t(), out=y[r, r0:r1])
    return y


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    pm = zo.kernels("compile").pm
    k, eps = torch.tensor(noise.keys(1, "head"), dtype=torch.int32), torch.tensor(1e-3)
    out = []
    for name, (N, K, rows, pos, pieces) in SHAPES.items():
        g = torch.Generator().manual_seed(0)
        W = torch.randn(N, K, generator=g) * 0.02
        x = torch.randn(rows * pieces * pos, K, generator=g)
        per_rows = {"whole": N, "4M elements (before)": zo.CHUNK // K // 256 * 256,
                    "1M elements (LINEAR_CHUNK)": zo.LINEAR_CHUNK // K // 256 * 256}
        whole = product(W, x, pieces, rows * pos, N, pm, k, eps)
        same = {c: torch.equal(product(W, x, pieces, rows * pos, per, pm, k, eps), whole) for c, per in per_rows.items()}
        times = {c: [] for c in per_rows}
        for r in range(a.rounds):
            for c in (list(per_rows) if r % 2 == 0 else list(per_rows)[::-1]):
                t0 = time.perf_counter()
                product(W, x, pieces, rows * pos, per_rows[c], pm, k, eps)
                times[c].append(time.perf_counter() - t0)
        base = statistics.median(times["whole"])
        print(f"\n{name} ({N} x {K}; {pieces} pieces of {rows * pos} positions)")
        print("| chunk | rows per chunk | median (ms) | vs whole | same bits as whole |")
        print("|---|---:|---:|---:|---|")
        for c, per in per_rows.items():
            m = statistics.median(times[c])
            print(f"| {c} | {per} | {m * 1e3:.1f} | {m / base:.2f}x | {same[c]} |")
            out.append({"shape": name, "chunk": c, "rows": per, "median_s": m, "ratio": m / base,
                        "same_bits": same[c], "times_s": times[c]})
    print(f"\n{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"threads": torch.get_num_threads(), "torch": torch.__version__, "rows": out}, f, indent=1)


if __name__ == "__main__":
    main()

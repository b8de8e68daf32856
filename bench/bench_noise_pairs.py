"""Both Box-Muller outputs per hash word, as the compiled CPU kernels would run them: speed and
compile time against lowbias32-poly-v2 (BENCHMARKS.md section 9.1).

A paired generator (a candidate lowbias32-pair-v3, not in mezo/noise.py): elements 32b + j and
32b + 16 + j (j < 16) share the word of pair p = 16b + j; its top 19 bits give the radius, bit
12 a sign, the low 12 bits the angle (v2's), and the pair is (r cos phi, r sin phi). A lane of
two 16-wide vectors then computes one word, radius, sine and cosine for two elements. Each
variant runs in the two shapes the engine uses, torch.compile'd with dynamic shapes as
mezo.zo compiles its kernels, on one 4M-element chunk:

  update   x <- x + eps z in place (the update sweep's shape)
  pm       (x + eps z, x - eps z) as new tensors (the dual forward's weights)

Variants:
  v2           mezo.noise lowbias32-poly-v2 (the default), inductor's default options
  pairs        the paired generator, inductor's default options (realize_opcount_threshold 30)
  pairs-t200   realize_opcount_threshold 200: the pair's intermediates stay in registers
  pairs-word   as pairs-t200, with the hash word forced into a buffer first
               (prims.inductor_force_stride_order): see the compile times
  pairs-word-xcat  as pairs-word, x added inside each half before the halves are joined
               (cat([x0 + eps zc, x1 + eps zs]) instead of x + eps cat([zc, zs]))

Compile times are cold (a fresh inductor cache in a temporary folder), in this order, after one
warm-up compile; the timings are interleaved round by round in one process, medians.

    OMP_NUM_THREADS=2 python bench/bench_noise_pairs.py --json bench/results/noise_pairs.json
"""
from __future__ import annotations

import os
import tempfile

os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="inductor_pairs_"))

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mezo import noise  # noqa: E402
from mezo.noise import _radius, _shr, _sine_v2, _word  # noqa: E402

N = 1 << 22


def radius19(h):
    """sqrt(-2 ln u), u = (2 (h >>> 13) + 1) / 2**20: v2's radius polynomial with 20-bit uniforms."""
    return _radius((((h >> 12) & 0xFFFFE) | 1).to(torch.float32), 20)


def pair(h):
    """(r cos phi, r sin phi), r signed by bit 12; cos as an even polynomial in (t / 2**12)**2."""
    r = radius19(h) * (1.0 - 2.0 * (_shr(h, 12) & 1).to(torch.float32))
    t = (((h << 20) >> 19) | 1).to(torch.float32)
    w = t * 0.000244140625
    u = w * w
    u2 = u * u
    c = (u * -1.2336987257003784 + 1.0) + u2 * ((u * -0.020813360810279846 + 0.2536526620388031) + u2 * 0.000859464518725872)
    return r * c, r * _sine_v2(h)


def z_pairs(start, n, k, force_word: bool):
    p = torch.arange(n // 2, dtype=torch.int32, device=k.device).view(-1, 16) + (start >> 1)
    h = _word(p, k)
    if force_word:
        h = torch.ops.prims.inductor_force_stride_order(h, h.stride())
    zc, zs = pair(h)
    return torch.cat([zc, zs], 1).view(-1)


def pairs_xcat(x, start, k, eps, sign: float = 1.0):
    """cat([x0 + eps zc, x1 + eps zs]) over blocks of 32 (sign -1: minus), the word forced."""
    xv = x.view(-1, 32)
    p = torch.arange(x.numel() // 2, dtype=torch.int32, device=k.device).view(-1, 16) + (start >> 1)
    h = _word(p, k)
    h = torch.ops.prims.inductor_force_stride_order(h, h.stride())
    zc, zs = pair(h)
    if sign > 0:
        return torch.cat([xv[:, :16] + eps * zc, xv[:, 16:] + eps * zs], 1).view(-1)
    return torch.cat([xv[:, :16] - eps * zc, xv[:, 16:] - eps * zs], 1).view(-1)


def z_elementwise(start, n, k):
    """The paired generator element by element (its pair's word, both outputs, one kept)."""
    i = torch.arange(n, dtype=torch.int32, device=k.device) + start
    zc, zs = pair(_word(((i >> 5) << 4) | (i & 15), k))
    return torch.where((i & 16) != 0, zs, zc)


VARIANTS = {  # name: (z(start, n, k), inductor options)
    "v2": (lambda s, n, k: noise.z_range(s, n, k, "gaussian", "lowbias32-poly-v2"), {}),
    "pairs": (lambda s, n, k: z_pairs(s, n, k, False), {}),
    "pairs-t200": (lambda s, n, k: z_pairs(s, n, k, False), {"realize_opcount_threshold": 200}),
    "pairs-word": (lambda s, n, k: z_pairs(s, n, k, True), {"realize_opcount_threshold": 200}),
    "pairs-word-xcat": (None, {"realize_opcount_threshold": 200}),
}


def kernels(z, options):
    def update(x, start, k, eps):
        x.copy_(x + eps * z(start, x.numel(), k))

    def pm(x, start, k, eps):
        t = eps * z(start, x.numel(), k)
        return x + t, x - t

    if z is None:  # pairs-word-xcat
        def update(x, start, k, eps):  # noqa: F811
            x.copy_(pairs_xcat(x, start, k, eps))

        def pm(x, start, k, eps):  # noqa: F811
            return pairs_xcat(x, start, k, eps), pairs_xcat(x, start, k, eps, -1.0)

    def comp(f):
        return torch.compile(f, dynamic=True, fullgraph=True, options=options)
    return {"update": comp(update), "pm": comp(pm)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--json", default=None)
    a = p.parse_args()
    import torch._inductor.config
    import torch._inductor.inductor_prims  # noqa: F401 - registers prims.inductor_force_stride_order
    torch._inductor.config.emulate_precision_casts = True  # as mezo.zo compiles its kernels
    k = torch.tensor(noise.keys(3, "w"), dtype=torch.int32)
    s0, eps = torch.tensor(0, dtype=torch.int32), torch.tensor(1e-3)
    torch.compile(lambda x: x + 1, dynamic=True)(torch.zeros(64))  # the first compile's one-time costs
    want = z_elementwise(s0, N, k)
    x = torch.zeros(N)
    ks, compile_s = {}, {}
    for v in a.variants:
        for shape, f in kernels(*VARIANTS[v]).items():
            t0 = time.perf_counter()
            f(x, s0, k, eps)
            compile_s[f"{v} {shape}"] = time.perf_counter() - t0
            ks[f"{v} {shape}"] = f
            print(f"{v} {shape}: compiled in {compile_s[f'{v} {shape}']:.1f} s", flush=True)
        if v != "v2":  # the same bits as element by element
            y = torch.zeros(N)
            ks[f"{v} update"](y, s0, k, torch.tensor(1.0))
            assert torch.equal(y, want), v
    times = {m: [] for m in ks}
    for _ in range(a.rounds):
        for m, f in ks.items():
            t0 = time.perf_counter()
            for _ in range(5):
                f(x, s0, k, eps)
            times[m].append((time.perf_counter() - t0) / 5 / N * 1e9)
    med = {m: statistics.median(v) for m, v in times.items()}
    print(f"\n{torch.get_num_threads()} threads, torch {torch.__version__}, 4M elements, median of {a.rounds} rounds\n")
    print("| variant | update ns/element | vs v2 | pm ns/element | vs v2 | compile update (s) | compile pm (s) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for v in a.variants:
        u, q = med[f"{v} update"], med[f"{v} pm"]
        ru = f"{u / med['v2 update']:.2f}x" if "v2 update" in med else "-"
        rq = f"{q / med['v2 pm']:.2f}x" if "v2 pm" in med else "-"
        print(f"| {v} | {u:.3f} | {ru} | {q:.3f} | {rq} | {compile_s[f'{v} update']:.1f} | {compile_s[f'{v} pm']:.1f} |")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"threads": torch.get_num_threads(), "torch": torch.__version__, "n": N, "rounds": a.rounds,
                       "ns_per_element": med, "compile_s": compile_s, "times": times}, fh, indent=1)


if __name__ == "__main__":
    main()

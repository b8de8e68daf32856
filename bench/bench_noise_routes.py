"""The routes to a cheaper z that lowbias32-poly-v2 was chosen over, measured in the same kernel.

Each variant replaces `noise.z_range` in the sweep kernel of bench/bench_noise.py (read x, add
eps * z, write x; torch.compile'd, dynamic shapes). Measured with one thread, as CPU time per
element (robust to other jobs taking the core away): "compute" on an L2-resident x (2**17
elements, 20 calls per timing, minus the per-call overhead measured on 2**10 elements), and
"4M" on one mezo.zo.CHUNK of 2**22 elements, memory traffic included; interleaved round by round
in one process, median of the rounds.

  v1                 mezo.noise lowbias32-v1 (two words; ATen/Sleef log, sqrt, cos)
  v2                 mezo.noise lowbias32-poly-v2 (the default)
  v2-horner          v2 with both polynomials in Horner's scheme instead of Estrin's
  v2-sleef           v2's word and bit layout, with torch.log / torch.sin (Sleef in the kernel)
  v2-low-degree      v2 with lower-degree polynomials: p of degree 4 in the log (relative error
                     9.7e-6), 4 terms of the sine (absolute error 1.6e-6)
  v2-one-round       v2 with a single lowbias32 round over an affine-keyed counter (i * (k0|1) + k1)
  philox7            Philox-4x32 with 7 rounds per lane: counter i >> 2, word i & 3 (32x32->64 bit
                     products in int64: torch has no vectorised 32-bit high multiply)
  pairs-stack        both Box-Muller outputs: one (radius, angle) per pair, the pair's cos and sin
                     stacked (inductor materialises the radius and the stacked z: extra passes)

    python bench/bench_noise_routes.py [--rounds 7]
    python bench/bench_noise_routes.py --serial      # the hash's serial test (no timing)

--serial: why v2 keeps two hash rounds. For 2**23 consecutive indices, the pairs of consecutive
top-6-bit values of the word (64 x 64 cells) against uniform: chi2 / dof (sd 0.022 for an ideal
generator), for two rounds, one round with a random odd multiplier, one round over a plain counter.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
import torch._dynamo

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mezo import noise  # noqa: E402
from mezo.noise import _radius_v2, _sine_v2, _shr, _word, mix  # noqa: E402


def _arange(start, n, k):
    return torch.arange(n, dtype=torch.int32, device=k.device) + start


def v2_horner(h):
    v = (((h >> 11) & 0x1FFFFE) | 1).to(torch.float32)
    b = v.view(torch.int32)
    e = (b - 0x3F3504F3) >> 23
    x = (b - (e << 23)).view(torch.float32) - 1.0
    q = x * 0.19462929666042328 + -0.324788898229599
    for c in (0.34778186678886414, -0.39805907011032104, 0.49913546442985535, -0.6666945219039917,
              1.000014066696167, -2.0):
        q = q * x + c
    r = torch.sqrt(x * q + (e - 21).to(torch.float32) * -1.3862943649291992)
    t = (((h << 20) >> 19) | 1).to(torch.float32)
    y = t * t
    s = y * 4.651693433403073e-37 + -2.4156508365624043e-28
    for c in (6.91189599533381e-20, -9.400005079873708e-12, 0.0003834951785393059):
        s = s * y + c
    return r * (t * s)


def v2_low_degree(h):
    """v2 with lower-degree polynomials (least squares on 20000 nodes, float32 coefficients):
    -2 ln(1 + x) = x (-2 + x p(x)) with p of degree 4 instead of 6 (max relative error 9.7e-6
    against 3.3e-7), sin with 4 terms in t^2 instead of 5 (max absolute error 1.6e-6 against 2e-7)."""
    v = (((h >> 11) & 0x1FFFFE) | 1).to(torch.float32)
    b = v.view(torch.int32)
    e = (b - 0x3F3504F3) >> 23
    x = (b - (e << 23)).view(torch.float32) - 1.0
    x2 = x * x
    q = (x * 0.9997760057449341 + -2.0) + x2 * ((x * 0.5093607306480408 + -0.6656639575958252) +
                                                 x2 * (x * 0.2734566926956177 + -0.4361707866191864))
    r = torch.sqrt(x * q + (e - 21).to(torch.float32) * -1.3862943649291992)
    t = (((h << 20) >> 19) | 1).to(torch.float32)
    y = t * t
    s = (y * -9.399169810520025e-12 + 0.0003834942472167313) + (y * y) * (y * -2.25034369535203e-28 +
                                                                           6.892476637984421e-20)
    return r * (t * s)


def v2_sleef(h):
    u = (((h >> 11) & 0x1FFFFE) | 1).to(torch.float32) * (1.0 / (1 << 21))
    t = (((h << 20) >> 19) | 1).to(torch.float32) * 0.0003834952076431364  # pi / 2**13
    return torch.sqrt(-2.0 * torch.log(u)) * torch.sin(t)


def philox_word(idx, k, rounds=7):
    m0, m1, w0, w1 = 0xD2511F53, 0xCD9E8D57, 0x9E3779B9 - (1 << 32), 0xBB67AE85 - (1 << 32)

    def mulhilo(a, m):
        p = (a.to(torch.int64) & 0xFFFFFFFF) * m
        return (p >> 32).to(torch.int32), p.to(torch.int32)
    c0, c1 = idx >> 2, torch.zeros_like(idx)
    c2, c3, k0, k1 = c1, c1, k[0], k[1]
    for _ in range(rounds):
        hi0, lo0 = mulhilo(c0, m0)
        hi1, lo1 = mulhilo(c2, m1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = k0 + w0, k1 + w1
    j = idx & 3
    return torch.where(j == 0, c0, torch.where(j == 1, c1, torch.where(j == 2, c2, c3)))


def pairs_stack(start, n, k):
    """Both outputs: pair p gives (r cos, r sin) to elements 2p, 2p+1 (start even, n even here)."""
    p = torch.arange(n // 2, dtype=torch.int32, device=k.device) + start // 2
    h = _word(p, k)
    r = _radius_v2(h)
    t = ((h & 0xFFF) * 2 + 1).to(torch.float32) * 0.0003834952076431364 * 4  # angle in (0, 2 pi)
    return torch.stack([r * torch.cos(t), r * torch.sin(t)], dim=1).reshape(-1)


def _from_word(word_fn, gauss_fn):
    def z(start, n, k, dist):
        h = word_fn(_arange(start, n, k), k)
        return 1.0 - 2.0 * _shr(h, 31).to(torch.float32) if dist == "rademacher" else gauss_fn(h)
    return z


ROUTES = {
    "v1": lambda s, n, k, d: noise.z_range(s, n, k, d, "lowbias32-v1"),
    "v2": lambda s, n, k, d: noise.z_range(s, n, k, d, "lowbias32-poly-v2"),
    "v2-horner": _from_word(_word, v2_horner),
    "v2-sleef": _from_word(_word, v2_sleef),
    "v2-low-degree": _from_word(_word, v2_low_degree),
    "v2-one-round": _from_word(lambda i, k: mix(i * (k[0] | 1) + k[1]), lambda h: _radius_v2(h) * _sine_v2(h)),
    "philox7": _from_word(philox_word, lambda h: _radius_v2(h) * _sine_v2(h)),
    "pairs-stack": lambda s, n, k, d: pairs_stack(s, n, k),
}


def serial_test(n: int = 1 << 23) -> None:
    idx = torch.arange(n, dtype=torch.int32)
    words = {"two rounds (v1, v2)": lambda k: _word(idx, k),
             "one round, random odd multiplier": lambda k: mix(idx * (k[0] | 1) + k[1]),
             "one round over a counter": lambda k: mix(idx + k[1])}
    print("| word | seed | chi2/dof of consecutive top-6-bit pairs |")
    print("|---|---:|---:|")
    for name, word in words.items():
        for seed in (0, 1):
            top = (word(torch.tensor(noise.keys(seed, "w"), dtype=torch.int32)).numpy().view("uint32") >> 26).astype("int64")
            counts = torch.bincount(torch.from_numpy(top[:-1] * 64 + top[1:]), minlength=4096).double()
            expect = (n - 1) / 4096
            print(f"| {name} | {seed} | {((counts - expect) ** 2 / expect).sum().item() / 4095:.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--serial", action="store_true", help="run the hash's serial test instead of timing")
    args = ap.parse_args()
    if args.serial:
        serial_test()
        return
    torch.set_num_threads(1)
    from torch._inductor import config as inductor_config
    inductor_config.emulate_precision_casts = True
    torch._dynamo.config.recompile_limit = 64  # one kernel code object, one graph per case
    torch._dynamo.config.accumulated_recompile_limit = 512

    def make(route, dist):
        def kern(x, start, k, eps):
            x.copy_(x + eps * ROUTES[route](start, x.numel(), k, dist))
        return torch.compile(kern, dynamic=True, fullgraph=True)
    cases = [(r, "gaussian") for r in ROUTES] + [(r, "rademacher") for r in ("v2", "v2-one-round", "philox7")]
    kernels = {c: make(*c) for c in cases}
    k, eps, st = torch.tensor(noise.keys(1, "w"), dtype=torch.int32), torch.tensor(1e-3), torch.tensor(0, dtype=torch.int32)
    xs = {1 << 10: torch.zeros(1 << 10), 1 << 17: torch.zeros(1 << 17), 1 << 22: torch.zeros(1 << 22)}
    for f in kernels.values():
        for x in xs.values():
            f(x, st, k, eps)
    res = {(c, n): [] for c in cases for n in xs}
    for _ in range(args.rounds):
        for c, f in kernels.items():
            for n, x in xs.items():
                reps = {1 << 10: 200, 1 << 17: 20, 1 << 22: 1}[n]
                t0 = time.process_time()
                for _ in range(reps):
                    f(x, st, k, eps)
                res[(c, n)].append((time.process_time() - t0) / reps)
    print("| route | z | compute ns/element | 4M ns/element | per-call overhead (us) |")
    print("|---|---|---:|---:|---:|")
    for c in cases:
        small, big, chunk = (statistics.median(res[(c, n)]) for n in (1 << 10, 1 << 17, 1 << 22))
        print(f"| {c[0]} | {c[1]} | {(big - small) / ((1 << 17) - (1 << 10)) * 1e9:.2f} | {chunk / (1 << 22) * 1e9:.2f} "
              f"| {small * 1e6:.0f} |")


if __name__ == "__main__":
    main()

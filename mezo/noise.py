"""Counter-based random directions: z = f(step seed, parameter name, element index).

Nothing here depends on how a parameter is sharded: element `i` of parameter `name`
gets the same value whichever rank owns it, so a shard generates exactly its slice.

Every generator starts from the same 32-bit word per element: two rounds of Wellons'
integer hash "lowbias32" keyed by two 32-bit words derived from (seed, name):

    h = mix(mix(i ^ k0) ^ k1)

Generators (GENERATORS, named with their version; a trajectory or checkpoint records the name):

lowbias32-v1 (every run before generator versioning; a trajectory without "generator" used it)
    gaussian    h2 = mix(mix(i ^ k2) ^ k3), u = ((h >> 8) + 0.5) / 2**24 for h and h2,
                z = sqrt(-2 ln u1) * cos(2 pi u2)      (Box-Muller with ATen's / Sleef's log, cos)
    rademacher  z = +1 if the top bit of h is 0 else -1

lowbias32-poly-v2 (the default): one word per element, and only IEEE-exact operations
    gaussian    Box-Muller on the word's two halves: the radius from its top 20 bits, the angle
                from its low 12 bits (a signed integer a), with a polynomial log and sine:
                    u = (2 (h >>> 12) + 1) / 2**21                      (uniform in (0, 1), never 0)
                    phi = (2 a + 1) pi / 2**13                           (uniform in (-pi/2, pi/2))
                    z = sqrt(-2 ln u) * sin(phi)
                sin(phi) for phi uniform on (-pi/2, pi/2) has the law of cos(theta) for theta
                uniform on the circle, so z is Box-Muller's first output. ln and sin are fixed
                polynomials evaluated with separately rounded float32 multiplies and adds (no
                FMA), plus one sqrt: eager PyTorch, the torch.compile'd kernel and Triton give
                the same bits. Accuracy against float64 on the whole grid: radius <= 3.3e-7
                relative, sine <= 2e-7 absolute; |z| <= 5.40; over all 2**32 words the mean is
                exactly 0, the variance 0.9999996 and the fourth moment 2.99998 (N(0,1): 1, 3).
    rademacher  as lowbias32-v1 (the top bit of h): the same values

bits_range (random bits for stochastic rounding) is the word h itself in both versions.

Why one word per element and not one counter for several values (Philox-4x32, both Box-Muller
outputs, 32 Rademacher signs per word): the compiled CPU kernel (and Triton's) computes each
element in its own SIMD lane from its own index, so a value shared by several elements is
computed once per element anyway; what costs is the work per lane, which v2 cuts from four
hash rounds + log/sqrt/cos to two hash rounds and about 45 vector instructions (BENCHMARKS.md,
"z generation cost"). One hash round instead of two would save another ~13%, but a single
lowbias32 round over a counter fails a serial test (BENCHMARKS.md).

Everything is uint32 arithmetic emulated on int32 tensors (multiplication wraps; right shifts
are masked to be logical), which torch.compile vectorises (torch.uint32 tensors are not: their
kernels come out scalar), and which is easy to write in Triton (mezo/noise_triton.py) or C.
"""
from __future__ import annotations

import hashlib

import torch

_M1 = 0x7FEB352D
_M2 = 0x846CA68B - (1 << 32)  # as a signed int32
DISTRIBUTIONS = ("gaussian", "rademacher")

GENERATORS = {
    "lowbias32-v1": "two lowbias32 words per element; Gaussian by Box-Muller with ATen's log/cos "
                    "(runs before generator versioning)",
    "lowbias32-poly-v2": "one lowbias32 word per element; Gaussian by Box-Muller with a float32 "
                         "polynomial log and sine, bit-exact across backends (default)",
}
DEFAULT_GENERATOR = "lowbias32-poly-v2"
LEGACY_GENERATOR = "lowbias32-v1"  # what a trajectory or checkpoint without a "generator" key used


def check_generator(generator: str) -> str:
    if generator not in GENERATORS:
        raise ValueError(f"unknown z generator {generator!r}; known: {', '.join(GENERATORS)}")
    return generator


def keys(seed: int, name: str) -> tuple[int, int, int, int]:
    """Four signed-int32 keys for (step seed, parameter name)."""
    digest = hashlib.blake2b(f"{int(seed)}/{name}".encode(), digest_size=16).digest()
    out = []
    for j in range(4):
        k = int.from_bytes(digest[4 * j: 4 * j + 4], "little")
        out.append(k - (1 << 32) if k >= (1 << 31) else k)
    return tuple(out)


def _shr(x: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int32 viewed as uint32."""
    return (x >> s) & ((1 << (32 - s)) - 1)


def mix(x: torch.Tensor) -> torch.Tensor:
    x = x ^ _shr(x, 16)
    x = x * _M1
    x = x ^ _shr(x, 15)
    x = x * _M2
    return x ^ _shr(x, 16)


def _word(idx: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The 32 random bits (int32) of every generator for element indices idx under keys k."""
    return mix(mix(idx ^ k[0]) ^ k[1])


# Float constants are literals in the code, not module globals: torch.compile bakes literals into
# the kernel but passes each global float as a graph input (~7 us per kernel call each).

def _uniform(h: torch.Tensor) -> torch.Tensor:
    return (_shr(h, 8).to(torch.float32) + 0.5) * 5.9604644775390625e-08  # 2**-24


def _gaussian_v1(h1: torch.Tensor, idx: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    h2 = mix(mix(idx ^ k[2]) ^ k[3])
    r = torch.sqrt(-2.0 * torch.log(_uniform(h1)))
    return r * torch.cos(6.283185307179586 * _uniform(h2))  # 2 pi


def _sqrt_rn(x: torch.Tensor) -> torch.Tensor:
    """The correctly rounded float32 square root in eager mode. ATen's eager float sqrt on CPU is
    not (measured: 15% of random inputs 1 ulp off); the compiled kernel's (vsqrtps) and Triton's
    sqrt_rn are. A float64 square root rounded to float32 is correctly rounded: the root of a
    24-bit float is never within 2**-50 (relative) of a float32 rounding boundary, and a float64
    root is within 2**-52 of the exact one."""
    return torch.sqrt(x.double()).float()


def _radius_v2(h: torch.Tensor) -> torch.Tensor:
    """sqrt(-2 ln u), u = v / 2**21 with v = 2m + 1, m = h >>> 12 (see _gaussian_v2)."""
    return _radius((((h >> 11) & 0x1FFFFE) | 1).to(torch.float32), 21)


def _radius(v: torch.Tensor, width: int) -> torch.Tensor:
    """sqrt(-2 ln(v / 2**width)) for odd integers 0 < v < 2**width held exactly in float32."""
    # v = 2**e (1 + x) with 1 + x in [sqrt(1/2), sqrt(2)): the float's exponent and mantissa
    b = v.view(torch.int32)
    e = (b - 0x3F3504F3) >> 23
    x = (b - (e << 23)).view(torch.float32) - 1.0
    x2 = x * x
    x4 = x2 * x2
    q = ((x * 1.000014066696167 + -2.0) + x2 * (x * 0.49913546442985535 + -0.6666945219039917)) + \
        x4 * ((x * 0.34778186678886414 + -0.39805907011032104) + x2 * (x * 0.19462929666042328 + -0.324788898229599))
    r2 = x * q + (e - width).to(torch.float32) * -1.3862943649291992  # -2 ln u = -2 ln(1+x) - 2 (e-width) ln 2
    return torch.sqrt(r2) if torch.compiler.is_compiling() else _sqrt_rn(r2)


def _sine_v2(h: torch.Tensor) -> torch.Tensor:
    """sin(phi), phi = t pi / 2**13 with t = 2a + 1, a = the low 12 bits of h as a signed integer."""
    t = (((h << 20) >> 19) | 1).to(torch.float32)
    y = t * t
    y2 = y * y
    return t * ((y * -9.400005079873708e-12 + 0.0003834951785393059) +
                y2 * ((y * -2.4156508365624043e-28 + 6.91189599533381e-20) + y2 * 4.651693433403073e-37))


def _gaussian_v2(h: torch.Tensor) -> torch.Tensor:
    """lowbias32-poly-v2's Gaussian from the word h: radius (top 20 bits) times sine (low 12 bits).
    The constants are float32 values (the literals are their exact decimal forms, so every backend
    reads the same numbers): a least-squares fit on 4000 Chebyshev nodes, rounded to float32, of
        -2 ln(1 + x) = x * q(x),  q(x) = -2 + x p(x)   on [sqrt(1/2) - 1, sqrt(2) - 1]
        sin(phi) = phi * s(phi^2)                       on [0, pi/2], in t = phi 2**13 / pi.
    Both polynomials are evaluated in Estrin's scheme (shorter dependency chains than Horner's:
    measurably faster in the vectorised kernel); the order of operations is part of the version."""
    return _radius_v2(h) * _sine_v2(h)


def z_from_index(idx: torch.Tensor, k: torch.Tensor, dist: str, generator: str = DEFAULT_GENERATOR) -> torch.Tensor:
    """z for int32 element indices `idx` under keys `k` (int32 tensor of 4)."""
    check_generator(generator)
    h = _word(idx, k)
    if dist == "rademacher":
        return 1.0 - 2.0 * _shr(h, 31).to(torch.float32)
    return _gaussian_v2(h) if generator == "lowbias32-poly-v2" else _gaussian_v1(h, idx, k)


def z_range(start: torch.Tensor, n: int, k: torch.Tensor, dist: str, generator: str = DEFAULT_GENERATOR) -> torch.Tensor:
    """z for the n consecutive global indices start .. start+n-1 (start: an int32 scalar tensor,
    so that torch.compile'd callers do not recompile per offset). The one entry point of the
    sweep kernels; every generator here makes one value per index, so any slice is computed
    directly (no aligned block to cut)."""
    return z_from_index(torch.arange(n, dtype=torch.int32, device=k.device) + start, k, dist, generator)


def bits_range(start: torch.Tensor, n: int, k: torch.Tensor, generator: str = DEFAULT_GENERATOR) -> torch.Tensor:
    """32 random bits (int32) per index start .. start+n-1 under keys k: for stochastic rounding.
    Use keys of their own (e.g. keys(seed, name + "#sr")) so they are independent of z. The
    same in every generator version (the word h)."""
    check_generator(generator)
    idx = torch.arange(n, dtype=torch.int32, device=k.device) + start
    return _word(idx, k)


MAX_NUMEL = (1 << 31) - 1  # element indices are int32: one tensor may hold up to 2**31 - 1 elements


def index_range(start: int, n: int, device=None) -> torch.Tensor:
    """int32 global element indices start .. start+n-1."""
    assert 0 <= start and start + n <= MAX_NUMEL, "parameter too large for int32 element indices"
    return torch.arange(start, start + n, dtype=torch.int32, device=device)


def generate(seed: int, name: str, start: int, n: int, dist: str = "gaussian", device=None,
             generator: str = DEFAULT_GENERATOR) -> torch.Tensor:
    """The slice [start, start+n) of z for parameter `name` at `seed` (float32)."""
    k = torch.tensor(keys(seed, name), dtype=torch.int32, device=device)
    return z_from_index(index_range(start, n, device), k, dist, generator)

"""Counter-based random directions: z = f(step seed, parameter name, element index).

Nothing here depends on how a parameter is sharded: element `i` of parameter `name`
gets the same value whichever rank owns it, so a shard generates exactly its slice.

The generator is two rounds of a 32-bit integer hash (Wellons' "lowbias32") keyed by
two 32-bit words derived from (seed, name):

    h1 = mix(mix(i ^ k0) ^ k1)          h2 = mix(mix(i ^ k2) ^ k3)
    u  = ((h >> 8) + 0.5) / 2**24        (a uniform in (0, 1), never 0)
    gaussian    z = sqrt(-2 ln u1) * cos(2 pi u2)        (Box-Muller)
    rademacher  z = +1 if the top bit of h1 is 0 else -1

Everything is uint32 arithmetic emulated on int32 tensors (multiplication wraps;
right shifts are masked to be logical), so the same function is easy to write in
Triton (mezo/noise_triton.py can replicate it) or C.
"""
from __future__ import annotations

import hashlib
import math

import torch

_M1 = 0x7FEB352D
_M2 = 0x846CA68B - (1 << 32)  # as a signed int32
_INV24 = 1.0 / (1 << 24)
TWO_PI = 2.0 * math.pi
DISTRIBUTIONS = ("gaussian", "rademacher")


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


def _uniform(h: torch.Tensor) -> torch.Tensor:
    return (_shr(h, 8).to(torch.float32) + 0.5) * _INV24


def z_from_index(idx: torch.Tensor, k: torch.Tensor, dist: str) -> torch.Tensor:
    """z for int32 element indices `idx` under keys `k` (int32 tensor of 4)."""
    h1 = mix(mix(idx ^ k[0]) ^ k[1])
    if dist == "rademacher":
        return 1.0 - 2.0 * _shr(h1, 31).to(torch.float32)
    h2 = mix(mix(idx ^ k[2]) ^ k[3])
    r = torch.sqrt(-2.0 * torch.log(_uniform(h1)))
    return r * torch.cos(TWO_PI * _uniform(h2))


def z_range(start: torch.Tensor, n: int, k: torch.Tensor, dist: str) -> torch.Tensor:
    """z for the n consecutive global indices start .. start+n-1 (start: an int32 scalar tensor,
    so that torch.compile'd callers do not recompile per offset). The one entry point of the
    sweep kernels: a generator that makes several values per counter fills a range at once."""
    return z_from_index(torch.arange(n, dtype=torch.int32, device=k.device) + start, k, dist)


def bits_range(start: torch.Tensor, n: int, k: torch.Tensor) -> torch.Tensor:
    """32 random bits (int32) per index start .. start+n-1 under keys k: for stochastic rounding.
    Use keys of their own (e.g. keys(seed, name + "#sr")) so they are independent of z."""
    idx = torch.arange(n, dtype=torch.int32, device=k.device) + start
    return mix(mix(idx ^ k[0]) ^ k[1])


MAX_NUMEL = (1 << 31) - 1  # element indices are int32: one tensor may hold up to 2**31 - 1 elements


def index_range(start: int, n: int, device=None) -> torch.Tensor:
    """int32 global element indices start .. start+n-1."""
    assert 0 <= start and start + n <= MAX_NUMEL, "parameter too large for int32 element indices"
    return torch.arange(start, start + n, dtype=torch.int32, device=device)


def generate(seed: int, name: str, start: int, n: int, dist: str = "gaussian", device=None) -> torch.Tensor:
    """The slice [start, start+n) of z for parameter `name` at `seed` (float32)."""
    k = torch.tensor(keys(seed, name), dtype=torch.int32, device=device)
    return z_from_index(index_range(start, n, device), k, dist)

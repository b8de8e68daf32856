"""Triton versions of the engine's kernels: `zo._sweep_kernel` (restore / update / perturb a flat
shard in one pass: numerics master and reference), and at the end of this file `zo._pm_kernel`
and `zo._update_kernel` (numerics stochastic: the dual forward's weights, the stochastically
rounded update).

z is generated inside the kernel from (keys, global element index) with the hash of
mezo/noise.py, so each weight is read once and written once per sweep and no z tensor
exists. Semantics follow `zo._sweep_kernel` op for op:

    x <- rnd(x + ar * z(kr))                                  if RESTORE
    x <- rnd(x - lr * (sum_j cu[j] * z(ku[j]) + wd * x))      if N_UPDATE
    master mode:  out <- cast(x + bp * z(kp))   (or cast(x) without PERTURB)
    in place:     x <- cast(x + bp * z(kp))                   if PERTURB

rnd() rounds to x's dtype (when `rounding`). Floating-point contraction is disabled, so
every add and multiply is rounded separately, as in eager PyTorch. fp32 -> bf16 casts are
done with integer round-to-nearest-even (as torch does; Triton's interpreter truncates).

Generators (mezo/noise.py GENERATORS) are @triton.jit functions `_z_<generator>` and
`_bits_<generator>`, selected by the constexpr GEN. Rademacher z and the random bits are
bit-exact vs mezo/noise.py in every version; Gaussian z of lowbias32-poly-v2 too (float32
polynomials with separately rounded operations and sqrt_rn); Gaussian z of lowbias32-v1 differs
only by the log/cos implementation (libdevice on GPU, numpy in TRITON_INTERPRET=1 mode), ~1e-7.
"""
from __future__ import annotations

import os

import torch

from mezo import noise

try:
    import triton
    import triton.language as tl
    from triton.language.extra import libdevice
    HAVE_TRITON = True
except Exception:  # pragma: no cover - no triton
    HAVE_TRITON = False

BLOCK = 1024
GEN_ID = {"lowbias32-v1": 1, "lowbias32-poly-v2": 2}  # the constexpr GEN of the kernels
assert set(GEN_ID) == set(noise.GENERATORS)


def available() -> bool:
    """Triton importable and a CUDA device present (the GPU path is usable)."""
    return HAVE_TRITON and torch.cuda.is_available()


if HAVE_TRITON:
    @triton.jit
    def _mix(x):  # lowbias32 on uint32
        x = x ^ (x >> 16)
        x = x * 0x7FEB352D
        x = x ^ (x >> 15)
        x = x * 0x846CA68B
        return x ^ (x >> 16)

    @triton.jit
    def _key(k_ptr, j: tl.constexpr):
        return tl.load(k_ptr + j).to(tl.uint32, bitcast=True)

    @triton.jit
    def _uniform(h):
        return ((h >> 8).to(tl.float32) + 0.5) * (1.0 / 16777216.0)

    @triton.jit
    def _word(idx, k_ptr):
        """The 32-bit word of every generator (mezo.noise._word), as uint32."""
        return _mix(_mix(idx ^ _key(k_ptr, 0)) ^ _key(k_ptr, 1))

    @triton.jit
    def _z_lowbias32_v1(idx, k_ptr, GAUSS: tl.constexpr, LIBDEVICE: tl.constexpr):
        h1 = _word(idx, k_ptr)
        if GAUSS:
            h2 = _mix(_mix(idx ^ _key(k_ptr, 2)) ^ _key(k_ptr, 3))
            t = 6.283185307179586 * _uniform(h2)
            if LIBDEVICE:
                r = tl.sqrt_rn(-2.0 * libdevice.log(_uniform(h1)))
                z = r * libdevice.cos(t)
            else:
                r = tl.sqrt_rn(-2.0 * tl.log(_uniform(h1)))
                z = r * tl.cos(t)
        else:
            z = 1.0 - 2.0 * (h1 >> 31).to(tl.float32)
        return z

    @triton.jit
    def _z_lowbias32_poly_v2(idx, k_ptr, GAUSS: tl.constexpr):
        """mezo.noise._gaussian_v2 operation for operation (the kernels run with fp fusion off)."""
        h = _word(idx, k_ptr)
        if GAUSS:
            v = (((h >> 11) & 0x1FFFFE) | 1).to(tl.float32)
            b = v.to(tl.int32, bitcast=True)
            e = (b - 0x3F3504F3) >> 23
            x = (b - (e << 23)).to(tl.float32, bitcast=True) - 1.0
            x2 = x * x
            x4 = x2 * x2
            q = ((x * 1.000014066696167 + -2.0) + x2 * (x * 0.49913546442985535 + -0.6666945219039917)) + \
                x4 * ((x * 0.34778186678886414 + -0.39805907011032104) + x2 * (x * 0.19462929666042328 + -0.324788898229599))
            r = tl.sqrt_rn(x * q + (e - 21).to(tl.float32) * -1.3862943649291992)
            hs = h.to(tl.int32, bitcast=True)
            t = (((hs << 20) >> 19) | 1).to(tl.float32)
            y = t * t
            y2 = y * y
            s = (y * -9.400005079873708e-12 + 0.0003834951785393059) + \
                y2 * ((y * -2.4156508365624043e-28 + 6.91189599533381e-20) + y2 * 4.651693433403073e-37)
            z = r * (t * s)
        else:
            z = 1.0 - 2.0 * (h >> 31).to(tl.float32)
        return z

    @triton.jit
    def _bits_lowbias32(idx, k_ptr):
        """mezo.noise.bits_range of both versions: the word, as int32."""
        return _word(idx, k_ptr).to(tl.int32, bitcast=True)

    @triton.jit
    def _z(idx, k_ptr, GAUSS: tl.constexpr, LIBDEVICE: tl.constexpr, GEN: tl.constexpr):
        if GEN == 2:
            z = _z_lowbias32_poly_v2(idx, k_ptr, GAUSS)
        else:
            z = _z_lowbias32_v1(idx, k_ptr, GAUSS, LIBDEVICE)
        return z

    @triton.jit
    def _z_range_kernel(out_ptr, n, start_ptr, k_ptr, GAUSS: tl.constexpr, LIBDEVICE: tl.constexpr,
                        GEN: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        idx = (offs + tl.load(start_ptr)).to(tl.uint32)
        tl.store(out_ptr + offs, _z(idx, k_ptr, GAUSS, LIBDEVICE, GEN), mask=offs < n)

    @triton.jit
    def _bits_range_kernel(out_ptr, n, start_ptr, k_ptr, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        idx = (offs + tl.load(start_ptr)).to(tl.uint32)
        tl.store(out_ptr + offs, _bits_lowbias32(idx, k_ptr), mask=offs < n)

    @triton.jit
    def _cast(v, dt: tl.constexpr):
        """fp32 -> dt with round-to-nearest-even (bf16 done on the bits)."""
        if dt == tl.bfloat16:
            u = v.to(tl.uint32, bitcast=True)
            u = u + 0x7FFF + ((u >> 16) & 1)
            b = tl.where(v != v, 0x7FC0, u >> 16).to(tl.uint16)
            return b.to(tl.bfloat16, bitcast=True)
        else:
            return v.to(dt)

    @triton.jit
    def _sweep(x_ptr, out_ptr, n, start_ptr, kr_ptr, ar_ptr, ku_ptr, cu_ptr, lr_ptr, wd_ptr, kp_ptr, bp_ptr,
               GAUSS: tl.constexpr, ROUND: tl.constexpr, RESTORE: tl.constexpr, N_UPDATE: tl.constexpr,
               PERTURB: tl.constexpr, WRITE_OUT: tl.constexpr, MOVED: tl.constexpr, LIBDEVICE: tl.constexpr,
               GEN: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        idx = (offs + tl.load(start_ptr)).to(tl.uint32)  # global element index (< 2**31)
        xdt: tl.constexpr = x_ptr.dtype.element_ty
        v = tl.load(x_ptr + offs, mask=mask).to(tl.float32)
        if RESTORE:
            v = v + tl.load(ar_ptr) * _z(idx, kr_ptr, GAUSS, LIBDEVICE, GEN)
            if ROUND:
                v = _cast(v, xdt).to(tl.float32)
        if N_UPDATE > 0:
            s = tl.load(cu_ptr) * _z(idx, ku_ptr, GAUSS, LIBDEVICE, GEN)
            for j in tl.static_range(1, N_UPDATE):
                s = s + tl.load(cu_ptr + j) * _z(idx, ku_ptr + 4 * j, GAUSS, LIBDEVICE, GEN)
            v = v - tl.load(lr_ptr) * (s + tl.load(wd_ptr) * v)
            if ROUND:
                v = _cast(v, xdt).to(tl.float32)
        if PERTURB:
            p = v + tl.load(bp_ptr) * _z(idx, kp_ptr, GAUSS, LIBDEVICE, GEN)
        else:
            p = v
        if WRITE_OUT:
            if MOVED:
                tl.store(x_ptr + offs, _cast(v, xdt), mask=mask)
            tl.store(out_ptr + offs, _cast(p, out_ptr.dtype.element_ty), mask=mask)
        else:
            tl.store(x_ptr + offs, _cast(p, xdt), mask=mask)


def _vec(v, dtype, device) -> torch.Tensor:
    """A Python number/sequence or a tensor as a flat `dtype` tensor on `device` (no copy if already)."""
    if isinstance(v, torch.Tensor):
        return v.reshape(-1).to(device=device, dtype=dtype).contiguous()
    return torch.tensor(v, dtype=dtype, device=device).reshape(-1)


def triton_sweep(x, out, start, kr, ar, ku, cu, lr, wd, kp, bp, *, dist, rounding,
                 restore: bool, n_update: int, perturb: bool, write_out: bool, share_z: bool = False,
                 generator: str = noise.DEFAULT_GENERATOR):
    """Drop-in for `zo._sweep_kernel` (same arguments, generator included; scalars may be Python numbers or
    0-d tensors, keys tuples of 4 int32 or int32 tensors, ku shaped (n_update, 4)). share_z is
    accepted for the same signature; this kernel regenerates z (cheap next to memory traffic on a GPU)."""
    n = x.numel()
    if n == 0 or not (restore or n_update or perturb or write_out):
        return  # nothing to do (the eager kernel writes nothing either)
    assert x.is_contiguous() and (out is None or out.is_contiguous())
    dev = x.device
    i32 = lambda v: _vec(v, torch.int32, dev)  # noqa: E731
    f32 = lambda v: _vec(v, torch.float32, dev)  # noqa: E731
    _sweep[(triton.cdiv(n, BLOCK),)](
        x, out if out is not None else x, n, i32(start), i32(kr), f32(ar), i32(ku), f32(cu), f32(lr), f32(wd),
        i32(kp), f32(bp),
        GAUSS=dist == "gaussian", ROUND=bool(rounding), RESTORE=bool(restore), N_UPDATE=int(n_update),
        PERTURB=bool(perturb), WRITE_OUT=bool(write_out),
        MOVED=bool(restore or n_update), LIBDEVICE=dev.type == "cuda" and not _interpret(),
        GEN=GEN_ID[generator], BLOCK=BLOCK, num_warps=4, enable_fp_fusion=False)


def triton_z_range(start, n: int, k, dist: str, generator: str = noise.DEFAULT_GENERATOR) -> torch.Tensor:
    """mezo.noise.z_range with this file's generator functions (k: 4 int32 keys, on the device)."""
    k = _vec(k, torch.int32, k.device if isinstance(k, torch.Tensor) else "cpu")
    out = torch.empty(n, dtype=torch.float32, device=k.device)
    _z_range_kernel[(triton.cdiv(n, BLOCK),)](
        out, n, _vec(start, torch.int32, k.device), k, GAUSS=dist == "gaussian",
        LIBDEVICE=k.device.type == "cuda" and not _interpret(), GEN=GEN_ID[generator], BLOCK=BLOCK,
        enable_fp_fusion=False)
    return out


def triton_bits_range(start, n: int, k, generator: str = noise.DEFAULT_GENERATOR) -> torch.Tensor:
    """mezo.noise.bits_range with this file's generator functions (int32 random bits)."""
    noise.check_generator(generator)
    k = _vec(k, torch.int32, k.device if isinstance(k, torch.Tensor) else "cpu")
    out = torch.empty(n, dtype=torch.int32, device=k.device)
    _bits_range_kernel[(triton.cdiv(n, BLOCK),)](out, n, _vec(start, torch.int32, k.device), k, BLOCK=BLOCK)
    return out


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# ---------------------------------------------------------------------------- the stochastic numerics
# Twins of zo._pm_kernel (the dual forward's theta +/- eps z), zo._pm_rows_kernel (the same for an
# embedding's looked-up rows) and zo._update_kernel (the update,
# rounded stochastically). z comes from _z above (the twin of noise.z_range) and the rounding
# bits from _bits_lowbias32 (the twin of noise.bits_range).
if HAVE_TRITON:
    @triton.jit
    def _pm(theta_ptr, plus_ptr, minus_ptr, n, start_ptr, k_ptr, eps_ptr,
            GAUSS: tl.constexpr, BOTH: tl.constexpr, LIBDEVICE: tl.constexpr, GEN: tl.constexpr,
            BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        idx = (offs + tl.load(start_ptr)).to(tl.uint32)
        dt: tl.constexpr = theta_ptr.dtype.element_ty
        v = tl.load(theta_ptr + offs, mask=mask).to(tl.float32)
        t = tl.load(eps_ptr) * _z(idx, k_ptr, GAUSS, LIBDEVICE, GEN)
        tl.store(plus_ptr + offs, _cast(v + t, dt), mask=mask)
        if BOTH:
            tl.store(minus_ptr + offs, _cast(v - t, dt), mask=mask)

    @triton.jit
    def _pm_rows(table_ptr, rows_ptr, plus_ptr, minus_ptr, n, d, k_ptr, eps_ptr,
                 GAUSS: tl.constexpr, BOTH: tl.constexpr, LIBDEVICE: tl.constexpr, GEN: tl.constexpr,
                 BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        row = tl.load(rows_ptr + offs // d, mask=mask, other=0)
        at = row * d + offs % d  # the element's index in the whole table
        dt: tl.constexpr = table_ptr.dtype.element_ty
        v = tl.load(table_ptr + at, mask=mask).to(tl.float32)
        t = tl.load(eps_ptr) * _z(at.to(tl.uint32), k_ptr, GAUSS, LIBDEVICE, GEN)
        tl.store(plus_ptr + offs, _cast(v + t, dt), mask=mask)
        if BOTH:
            tl.store(minus_ptr + offs, _cast(v - t, dt), mask=mask)

    @triton.jit
    def _update(x_ptr, n, start_ptr, ku_ptr, cu_ptr, lr_ptr, wd_ptr, ksr_ptr,
                GAUSS: tl.constexpr, N_UPDATE: tl.constexpr, SR: tl.constexpr, DROP: tl.constexpr,
                LIBDEVICE: tl.constexpr, GEN: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        idx = (offs + tl.load(start_ptr)).to(tl.uint32)
        dt: tl.constexpr = x_ptr.dtype.element_ty
        v = tl.load(x_ptr + offs, mask=mask).to(tl.float32)
        s = tl.load(cu_ptr) * _z(idx, ku_ptr, GAUSS, LIBDEVICE, GEN)
        for j in tl.static_range(1, N_UPDATE):
            s = s + tl.load(cu_ptr + j) * _z(idx, ku_ptr + 4 * j, GAUSS, LIBDEVICE, GEN)
        v = v - tl.load(lr_ptr) * (s + tl.load(wd_ptr) * v)
        if SR:  # zo.stochastic_round: add random bits below the kept mantissa, truncate
            low: tl.constexpr = (1 << DROP) - 1
            u = v.to(tl.uint32, bitcast=True)
            r = (((u + (_bits_lowbias32(idx, ksr_ptr) & low)) >> DROP) << DROP).to(tl.float32, bitcast=True)
            finite = (u & 0x7F800000) != 0x7F800000
            v = tl.where(finite, r, v)
        tl.store(x_ptr + offs, _cast(v, dt), mask=mask)


def triton_pm(theta, start, k, eps, *, dist, both: bool, generator: str = noise.DEFAULT_GENERATOR):
    """Drop-in for `zo._pm_kernel`: (theta + eps z, theta - eps z or None) for a flat slice."""
    assert theta.is_contiguous()
    dev, n = theta.device, theta.numel()
    plus = torch.empty_like(theta)
    minus = torch.empty_like(theta) if both else None
    if n:
        _pm[(triton.cdiv(n, BLOCK),)](
            theta, plus, minus if both else plus, n, _vec(start, torch.int32, dev), _vec(k, torch.int32, dev),
            _vec(eps, torch.float32, dev), GAUSS=dist == "gaussian", BOTH=bool(both),
            LIBDEVICE=dev.type == "cuda" and not _interpret(), GEN=GEN_ID[generator], BLOCK=BLOCK, num_warps=4,
            enable_fp_fusion=False)
    return plus, minus


def triton_pm_rows(table, rows, k, eps, *, dist, both: bool, generator: str = noise.DEFAULT_GENERATOR):
    """Drop-in for `zo._pm_rows_kernel`: theta +/- eps z of the rows `rows` of a 2-D table."""
    assert table.is_contiguous() and table.dim() == 2
    dev, d = table.device, table.shape[1]
    rows = _vec(rows, torch.int64, dev)
    plus = table.new_empty(rows.numel(), d)
    minus = torch.empty_like(plus) if both else None
    n = plus.numel()
    if n:
        _pm_rows[(triton.cdiv(n, BLOCK),)](
            table, rows, plus, minus if both else plus, n, d, _vec(k, torch.int32, dev),
            _vec(eps, torch.float32, dev), GAUSS=dist == "gaussian", BOTH=bool(both),
            LIBDEVICE=dev.type == "cuda" and not _interpret(), GEN=GEN_ID[generator], BLOCK=BLOCK, num_warps=4,
            enable_fp_fusion=False)
    return plus, minus


def triton_update(x, start, ku, cu, lr, wd, ksr, *, dist, n_update: int, sr: bool,
                  generator: str = noise.DEFAULT_GENERATOR):
    """Drop-in for `zo._update_kernel`: the update of a flat shard slice in place (stochastic
    rounding to bf16/fp16 with the bits of keys ksr when `sr`)."""
    assert x.is_contiguous()
    dev, n = x.device, x.numel()
    if not n:
        return
    i32 = lambda v: _vec(v, torch.int32, dev)  # noqa: E731
    f32 = lambda v: _vec(v, torch.float32, dev)  # noqa: E731
    _update[(triton.cdiv(n, BLOCK),)](
        x, n, i32(start), i32(ku), f32(cu), f32(lr), f32(wd), i32(ksr), GAUSS=dist == "gaussian",
        N_UPDATE=int(n_update), SR=bool(sr) and x.dtype in (torch.bfloat16, torch.float16),
        DROP=16 if x.dtype == torch.bfloat16 else 13, LIBDEVICE=dev.type == "cuda" and not _interpret(),
        GEN=GEN_ID[generator], BLOCK=BLOCK, num_warps=4, enable_fp_fusion=False)

"""The MeZO engine: seed-replayed perturbations and SGD updates of (sharded) parameters.

One MeZO step with step seed s (Malladi et al., 2023, Algorithm 1):

    L+ = loss(theta + eps z(s));  L- = loss(theta - eps z(s));  g = (L+ - L-) / (2 eps)
    theta <- theta - lr * (g * z(s) + wd * theta)            (wd = 0 for biases and norms)

z is never stored: `mezo.noise` regenerates any slice of it from (s, parameter name, element
index), so each rank touches only its own shard and the result does not depend on sharding.

Three numerics (`numerics=`), two schedules:

* "stochastic" (the dual forward): theta is never perturbed in place. While the loss runs,
  every leaf module that owns trainable parameters (nn.Linear, nn.Embedding, norms, LoRA's
  lora_A/lora_B, ...) computes with theta + eps z and theta - eps z built on the fly from the
  weight it sees (under FSDP2 the unsharded copy right after the all-gather), z generated once
  for both signs. With a `pair_fn`, the batch runs once, duplicated along dim 0 ([rows; rows]):
  the leaf computes the first half with +eps and the second with -eps (z evaluation 1); without
  one, `loss_fn` runs twice, one sign each (z evaluated per forward). The update is z evaluation
  2: one sweep over the local shards, kept pending until the next step (or flush()), rounded
  stochastically in bf16/fp16 with random bits of its own (noise.bits_range under the keys of
  name + "#sr"), so small updates survive in expectation and lr = 0 leaves theta bit-identical.
  Nothing persists beyond the weights; the transient copies are bounded by CHUNK elements per
  big Linear (row chunks), the looked-up rows of an Embedding, and each other leaf's own size.
* "master": an fp32 copy of each trainable shard is the state; the parameters are written as
  cast(master + d * z) before each forward (the in-place sweep schedule below, nothing to restore).
* "reference": the parameters in their dtype are perturbed, restored and updated in place, as
  princeton-nlp/MeZO does: theta += eps z; L+; theta -= 2 eps z; L-; theta += eps z; update.

The sweep schedule (master, reference) is fused: the restore and the update stay *pending* and
are applied in the same pass as the next step's +eps perturbation, so a step costs two passes
instead of four with the same bits as the plain algorithm (`fused=False`).
"""
from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from mezo import noise

CHUNK = 1 << 22  # elements per kernel call (bounds the temporaries of sweeps and of big leaves)
# elements of W per chunk of a Linear bigger than CHUNK: every piece of the batch multiplies the
# chunk's theta +/- eps z (2 x 4 MiB in fp32) while it is still in the last-level cache
# (BENCHMARKS.md section 1.3)
LINEAR_CHUNK = 1 << 20
NUMERICS = ("reference", "master", "stochastic")
log = logging.getLogger("mezo")


def no_decay(name: str) -> bool:
    """Parameters without weight decay, as the reference: biases and normalisation weights."""
    n = name.lower()
    return "bias" in n or "norm" in n


@dataclass
class Slot:
    """One trainable parameter as this rank sees it: a flat view of its local shard."""
    name: str
    local: torch.Tensor          # flat, contiguous view of the local shard (written in place)
    start: int                   # global flat index of local element 0
    decay: bool
    master: torch.Tensor | None = None  # fp32 copy of the shard (master weights)


def local_view(param: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(flat local shard, global index of its first element) for a tensor or FSDP2 DTensor."""
    data = param.data
    if hasattr(data, "to_local"):  # DTensor (FSDP2 shards dim 0)
        from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
        local = data.to_local()
        _, offset = compute_local_shape_and_global_offset(data.shape, data.device_mesh, data.placements)
        row = 1
        for s in data.shape[1:]:
            row *= s
        start = offset[0] * row if len(offset) else 0
    else:
        local, start = data, 0
    assert local.is_contiguous(), "MeZO needs contiguous local shards"
    return local.view(-1), int(start)


# ---------------------------------------------------------------------------- kernels
def _sweep_kernel(x, out, idx0, kr, ar, ku, cu, lr, wd, kp, bp, *, dist, rounding,
                  restore: bool, n_update: int, perturb: bool, write_out: bool, share_z: bool = False,
                  generator: str = noise.DEFAULT_GENERATOR):
    """The sweep schedule (master, reference). x: state (param shard or fp32 master), updated
    in place; out: param shard (master mode).

    x <- x + ar * z(kr)                                    if restore
    x <- x - lr * (sum_j cu[j] * z(ku[j]) + wd * x)         if n_update
    master mode:  out <- cast(x + bp * z(kp))   (or cast(x) without perturb)
    in place:     x <- x + bp * z(kp)                       if perturb
    Each step is rounded to x's dtype when x is not fp32 (`rounding`), as separate sweeps would.
    share_z: the restore and the first update use the same seed (the fused schedule, n = 1), so
    z is generated once for both: the same values, one z evaluation fewer per element.
    """
    n = x.numel()
    v = x.float()

    def rnd(t):
        return t.to(x.dtype).float() if rounding else t

    zr = None
    if restore:
        zr = noise.z_range(idx0, n, kr, dist, generator)
        v = rnd(v + ar * zr)
    if n_update:
        s = cu[0] * (zr if share_z and zr is not None else noise.z_range(idx0, n, ku[0], dist, generator))
        for j in range(1, n_update):
            s = s + cu[j] * noise.z_range(idx0, n, ku[j], dist, generator)
        v = rnd(v - lr * (s + wd * v))
    if write_out:
        if restore or n_update:
            x.copy_(v)
        p = v + bp * noise.z_range(idx0, n, kp, dist, generator) if perturb else v
        out.copy_(p.to(out.dtype))
    elif perturb:
        x.copy_((v + bp * noise.z_range(idx0, n, kp, dist, generator)).to(x.dtype))
    elif restore or n_update:
        x.copy_(v.to(x.dtype))


def _pm_kernel(theta, idx0, k, eps, *, dist, both: bool, generator: str = noise.DEFAULT_GENERATOR):
    """The dual forward's weights for a flat slice of theta starting at global index idx0:
    (theta + eps z, theta - eps z) when `both`, else (theta + eps z, None) (eps may be negative),
    computed in fp32 and cast once to theta's dtype. One z evaluation for both signs."""
    return _plus_minus(theta, eps * noise.z_range(idx0, theta.numel(), k, dist, generator), both)


def _plus_minus(theta, t, both: bool):
    """(theta + t, theta - t or None), computed in fp32 and cast once to theta's dtype."""
    v = theta.float()
    plus = (v + t).to(theta.dtype)
    return (plus, (v - t).to(theta.dtype)) if both else (plus, None)


def _pm_rows_kernel(table, rows, k, eps, *, dist, both: bool, generator: str = noise.DEFAULT_GENERATOR):
    """_pm_kernel for the rows `rows` (int64, [R]) of a 2-D table (an embedding's looked-up
    rows): [R, D] tensors, z from the global indices row * D + column. One call for rows spread
    over the whole table (a batch's token ids), where a call per row costs more than the row."""
    d = table.shape[1]
    idx = rows.to(torch.int32)[:, None] * d + torch.arange(d, dtype=torch.int32, device=table.device)
    return _plus_minus(table.index_select(0, rows), eps * noise.z_from_index(idx, k, dist, generator), both)


def stochastic_round(v: torch.Tensor, bits: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """fp32 `v` rounded to bf16/fp16 stochastically: up (in magnitude) with probability equal to
    the dropped fraction, using the low bits of the int32 `bits`, so E[result] = v. On the bit
    pattern: add random bits below the kept mantissa, then truncate (the sign is the top bit, so
    this rounds the magnitude for both signs). bf16 keeps fp32's exponent range, so this is
    exact stochastic rounding there; for fp16 the truncated value is then cast (round to
    nearest), which only matters in fp16's subnormal range (|v| < 6.1e-5) and beyond 65504.
    Non-finite values are cast as they are."""
    drop = 16 if dtype == torch.bfloat16 else 13
    mask = (1 << drop) - 1
    u = v.view(torch.int32)
    r = ((u + (bits & mask)) & ~mask).view(torch.float32)
    return torch.where(torch.isfinite(v), r, v).to(dtype)


def _update_kernel(x, idx0, ku, cu, lr, wd, ksr, *, dist, n_update: int, sr: bool,
                   generator: str = noise.DEFAULT_GENERATOR):
    """The stochastic numerics' update, in place on a flat shard slice x (global index idx0):
    x <- round(x - lr * (sum_j cu[j] * z(ku[j]) + wd * x)), computed in fp32; `sr`: rounded
    stochastically to x's dtype with bits under keys ksr, else cast (fp32: nothing to round)."""
    n = x.numel()
    v = x.float()
    s = cu[0] * noise.z_range(idx0, n, ku[0], dist, generator)
    for j in range(1, n_update):
        s = s + cu[j] * noise.z_range(idx0, n, ku[j], dist, generator)
    v = v - lr * (s + wd * v)
    if sr:
        x.copy_(stochastic_round(v, noise.bits_range(idx0, n, ksr, generator), x.dtype))
    else:
        x.copy_(v.to(x.dtype))


_COMPILED: dict = {}
# A parallel loop whatever the size of the first call, with the thread count read when it runs.
# Left to itself, inductor makes a dynamic-shape CPU kernel serial when its first call is small
# (a 576-element norm weight, an embedding row) and its FX graph cache, which keys on neither
# that size nor the decision, gives the serial kernel to every later process too.
#
# Every intermediate used more than once becomes a buffer of its own (realize_opcount_threshold 1;
# inductor's default, 30, inlines any node of up to 30 ops into each of its users). The generator
# reuses nearly every value (each xorshift reads its input twice, the polynomials read x and x^2
# several times), so inlining re-traces the same subexpressions over and over: the pm and update
# kernels took 20-35 s each to compile cold. As buffers they take 3-4 s; they all fuse into the
# one loop, where inductor keeps them in registers (kernel-local), so the kernels give the same
# bits at the same speed (bench/bench_compile.py, BENCHMARKS.md section 2.1).
COMPILE_OPTIONS = {"cpp.dynamic_threads": True, "realize_opcount_threshold": 1}


def compile_kernel(fn):
    """torch.compile `fn` as the engine compiles its kernels (dynamic shapes, one graph)."""
    return torch.compile(fn, dynamic=True, fullgraph=True, options=COMPILE_OPTIONS)


def _compiled(fn):
    """torch.compile'd `fn` (one generated fused kernel per dtype/flag combination: C++ on CPU)."""
    if fn not in _COMPILED:
        import torch._dynamo
        import torch._inductor.config
        # keep x.to(bf16).float() roundings, so fused == unfused bit for bit in low precision
        torch._inductor.config.emulate_precision_casts = True
        # one graph per (flags, dtype) combination: a handful per run
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        torch._dynamo.config.accumulated_recompile_limit = max(torch._dynamo.config.accumulated_recompile_limit, 512)
        _COMPILED[fn] = compile_kernel(fn)
    return _COMPILED[fn]


@dataclass(frozen=True)
class Kernels:
    """One backend's kernels, all with the eager functions' signatures."""
    sweep: Callable
    pm: Callable
    update: Callable
    pm_rows: Callable


def kernels(backend: str) -> Kernels:
    if backend == "native":
        return _native_kernels()
    if backend == "triton":
        from mezo import noise_triton as nt
        return Kernels(nt.triton_sweep, nt.triton_pm, nt.triton_update, nt.triton_pm_rows)
    if backend == "compile":
        return Kernels(_compiled(_sweep_kernel), _compiled(_pm_kernel), _compiled(_update_kernel),
                       _compiled(_pm_rows_kernel))
    return Kernels(_sweep_kernel, _pm_kernel, _update_kernel, _pm_rows_kernel)


@functools.lru_cache(maxsize=1)
def _native_kernels() -> Kernels:
    """The hand-written C kernels (mezo/native.py) for the calls they handle (float32 and bf16 CPU
    tensors, the default generator), the compiled kernels for the others."""
    from mezo import native
    comp = kernels("compile")

    def pm(theta, idx0, k, eps, *, dist, both, generator=noise.DEFAULT_GENERATOR):
        if native.handles(theta, generator):
            return native.pm(theta, idx0, k, eps, dist=dist, both=both)
        return comp.pm(theta, idx0, k, eps, dist=dist, both=both, generator=generator)

    def pm_rows(table, rows, k, eps, *, dist, both, generator=noise.DEFAULT_GENERATOR):
        if native.handles(table, generator):
            return native.pm_rows(table, rows, k, eps, dist=dist, both=both)
        return comp.pm_rows(table, rows, k, eps, dist=dist, both=both, generator=generator)

    def update(x, idx0, ku, cu, lr, wd, ksr, *, dist, n_update, sr, generator=noise.DEFAULT_GENERATOR):
        if native.handles(x, generator) and not (sr and x.dtype == torch.float32):
            return native.update(x, idx0, ku, cu, lr, wd, ksr, dist=dist, n_update=n_update, sr=sr)
        return comp.update(x, idx0, ku, cu, lr, wd, ksr, dist=dist, n_update=n_update, sr=sr, generator=generator)

    return Kernels(comp.sweep, pm, update, pm_rows)


def resolve_backend(backend: str, device: torch.device) -> str:
    """'auto' -> 'triton' (hand-written kernel, mezo/noise_triton.py) on a CUDA device when
    Triton is installed; on CPU 'native' (hand-written C, mezo/native.py) when a C compiler is
    there, else 'compile' (torch.compile's generated C++); else as given. Native and compile give
    the same bits; native's kernels take about 0.7x the time (BENCHMARKS.md section 9.5)."""
    if backend == "triton" or (backend == "auto" and device.type == "cuda"):
        from mezo import noise_triton
        if noise_triton.available():
            return "triton"
        if backend == "triton":
            raise ValueError("--zo_backend triton needs the triton package and a CUDA device")
    if backend == "native" and device.type != "cpu":
        raise ValueError("--zo_backend native runs on CPU only")
    if backend != "auto":
        return backend
    try:
        import torch._inductor  # noqa: F401  (native's fallback and the calls it leaves are compiled)
    except Exception:  # pragma: no cover - torch without inductor
        return "eager"
    from mezo import native
    return "native" if device.type == "cpu" and native.available() else "compile"


# ---------------------------------------------------------------------------- parity self-check
FALLBACK = {"triton": "compile", "native": "compile", "compile": "eager"}
# Gaussian z through two math libraries (libdevice or inductor's vectorised log/cos vs ATen's):
# within a few ulp (tests/unit/test_noise_triton.py measured <= 4.8e-7 at |z| <= 3.9)
Z_TOL = 1e-6


def agree(dist: str, got: torch.Tensor, want: torch.Tensor) -> bool:
    """The self-check's comparison: bit for bit where no transcendental function is involved
    (Rademacher z, rounding bits), else within Z_TOL (relative and absolute)."""
    got, want = got.float().cpu(), want.float().cpu()
    if dist == "rademacher":
        return torch.equal(got, want)
    return bool(torch.allclose(got, want, rtol=Z_TOL, atol=Z_TOL))


def parity_check(backend: str, device: torch.device, dist: str, numerics: str, compare=agree,
                 generator: str = noise.DEFAULT_GENERATOR) -> str | None:
    """None when `backend`'s kernels give what the eager PyTorch path gives on a small tensor
    (3000 elements at global index 777: not a multiple of any block; milliseconds once compiled),
    else the reason (the exception, or which output disagreed). compare(dist, got, want) -> bool."""
    if backend == "eager":
        return None
    if backend == "native":
        from mezo import native
        if numerics != "stochastic" or generator != native.GENERATOR:
            return None  # it would run the compiled kernels only (mezo.native.handles)
    try:
        got, want = kernels(backend), kernels("eager")
        i32 = lambda v: torch.tensor(v, dtype=torch.int32, device=device)  # noqa: E731
        f32 = lambda v: torch.tensor(v, dtype=torch.float32, device=device)  # noqa: E731
        g = torch.Generator().manual_seed(0)
        n, start = 3000, i32(777)
        k1, k2 = i32(noise.keys(1, "check")), i32(noise.keys(2, "check"))
        ksr = i32(noise.keys(1, "check#sr"))
        theta = torch.randn(n, generator=g).to(device)
        outs = {}
        if numerics == "stochastic":
            for name, k in (("pm", got), ("pm_ref", want)):
                outs[name] = k.pm(theta, start, k1, f32(1e-2), dist=dist, both=True, generator=generator)
            rows = torch.tensor([0, 3, 4, 29, 74], device=device)  # of theta as a 75 x 40 table
            for name, k in (("rows", got), ("rows_ref", want)):
                outs[name] = k.pm_rows(theta.view(75, 40), rows, k1, f32(1e-2), dist=dist, both=True,
                                       generator=generator)
            pairs = [("theta + eps z", outs["pm"][0], outs["pm_ref"][0], dist),
                     ("theta - eps z", outs["pm"][1], outs["pm_ref"][1], dist),
                     ("embedding rows +/- eps z", torch.cat(outs["rows"]), torch.cat(outs["rows_ref"]), dist)]
            # the rounding bits are compared exactly: Rademacher directions on bf16 weights
            for name, k in (("update", got), ("update_ref", want)):
                x = theta.to(torch.bfloat16)
                k.update(x, start, k1[None], f32([0.5]), f32(1e-3), f32(0.1), ksr, dist="rademacher",
                         n_update=1, sr=True, generator=generator)
                outs[name] = x
            pairs.append(("stochastic rounding", outs["update"], outs["update_ref"], "rademacher"))
            for name, k in (("update32", got), ("update32_ref", want)):  # float32: two directions
                x = theta.clone()
                k.update(x, start, torch.stack([k1, k2]), f32([0.5, -0.25]), f32(1e-3), f32(0.1), ksr, dist=dist,
                         n_update=2, sr=False, generator=generator)
                outs[name] = x
            pairs.append(("update", outs["update32"], outs["update32_ref"], dist))
        else:
            for name, k in (("sweep", got), ("sweep_ref", want)):
                x = theta.clone()
                k.sweep(x, None, start, k1, f32(-1e-2), k1[None], f32([0.5]), f32(1e-3), f32(0.1), k2, f32(1e-2),
                        dist=dist, rounding=False, restore=True, n_update=1, perturb=True, write_out=False,
                        share_z=True, generator=generator)
                outs[name] = x
            pairs = [("sweep", outs["sweep"], outs["sweep_ref"], dist)]
        for what, a, b, d in pairs:
            if not compare(d, a, b):
                diff = (a.float().cpu() - b.float().cpu()).abs().max().item()
                return f"{what} differs from the PyTorch path (max |diff| {diff:.3g})"
    except Exception as e:  # noqa: BLE001 - a compile or launch failure: fall back
        return f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"
    return None


def select_backend(backend: str, device: torch.device, dist: str, numerics: str,
                   compare=agree, generator: str = noise.DEFAULT_GENERATOR) -> tuple[str, list[str]]:
    """(the first backend from `backend` down the chain triton -> compile -> eager that passes
    parity_check, the failures met on the way as "backend: reason"), one warning line each."""
    failures = []
    while True:
        why = parity_check(backend, device, dist, numerics, compare, generator)
        if why is None:
            return backend, failures
        nxt = FALLBACK[backend]
        log.warning("MeZO kernel backend %s failed its parity self-check (%s): using %s", backend, why, nxt)
        failures.append(f"{backend}: {why}")
        backend = nxt


# ---------------------------------------------------------------------------- the dual forward
@dataclass
class Leaf:
    """A module whose own forward uses trainable parameters: (attribute, parameter name) pairs."""
    module: nn.Module
    params: list[tuple[str, str]]
    kind: str                  # "linear" | "embedding" | "rowwise" (norms: no GEMM) | "generic"


def leaves(model: nn.Module, trainable: dict[int, str]) -> tuple[list[Leaf], list[str]]:
    """The leaf modules owning the trainable parameters (id -> name), and the names of those that
    no leaf owns (e.g. prefix tuning's ParameterList, read by its parent): the dual forward
    cannot perturb those. Tied parameters keep their first name, so every use shares one z."""
    out, served = [], set()
    for mod in model.modules():
        mine = [(attr, trainable[id(p)]) for attr, p in mod._parameters.items()
                if p is not None and id(p) in trainable]
        if not mine or any(True for _ in mod.children()) or type(mod).forward is nn.Module.forward:
            continue
        own = "forward" not in mod.__dict__  # no hook replaced its forward
        if own and type(mod).forward is nn.Linear.forward:
            kind = "linear"
        elif own and type(mod).forward is nn.Embedding.forward and mod.max_norm is None:
            kind = "embedding"
        elif type(mod).__name__.endswith("Norm"):
            kind = "rowwise"
        else:
            kind = "generic"
        out.append(Leaf(mod, mine, kind))
        served.update(name for _, name in mine)
    return out, [n for n in trainable.values() if n not in served]


def _full(t: torch.Tensor) -> torch.Tensor:
    """The whole parameter: itself, or a DTensor gathered (FSDP2 all-gathers a module's weights in
    the pre-forward of the module it sharded; a submodule called directly, as the masked-LM
    scoring calls the encoder and the head, still holds its shard)."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _rows_of(x) -> int | None:
    return x.shape[0] if isinstance(x, torch.Tensor) and x.dim() > 0 else None


class Perturbation:
    """Installed on the leaves for the forwards of one direction (a context manager).

    dual=True: every leaf's batch is [rows; rows]; the first half sees theta + eps z, the second
    theta - eps z, and each half runs in `groups` equal groups of rows (the forwards the loss
    would otherwise run), so GEMM shapes do not depend on how many rows a rank holds.
    dual=False: the whole batch sees theta + eps z (eps carries the sign); batched=True says the
    forwards score a rank's whole batch at once, which then runs in `groups` groups of rows too.

    Padding is skipped: when the model (or its base model) is called with a 2-D attention_mask,
    a Linear whose input is [rows, T, K] with the mask's [rows, T] multiplies only the real
    tokens of each group (their rows gathered, the padded ones left 0). Padded positions are
    masked out of every attention, so no real token's result depends on them; the forwards of a
    batch padded to its longest row (the same shape on any number of ranks) then cost the GEMMs
    of its real tokens only."""

    def __init__(self, engine: "ZOEngine", seed: int, eps: float, dual: bool, batched: bool = False):
        self.engine, self.seed, self.dual = engine, seed, dual
        self.split = dual or batched  # the batch holds every forward's rows: split into groups
        self.groups = engine.row_groups
        self.kern = kernels(engine.backend)
        self._eps = eps
        # block-sparse methods: only these parameters are perturbed (None: all)
        self.active = engine.select(seed) if engine.select is not None else None
        self._keys: dict[str, torch.Tensor] = {}
        self._eps_t: torch.Tensor | None = None
        self._installed: list[tuple[nn.Module, object]] = []
        self._hooks: list = []
        # the real tokens of the current forward: (mask shape, flat row index, [(sign, slice)])
        self._tokens: tuple | None = None

    def __enter__(self):
        for leaf in self.engine.leaves:
            # a leaf outside the chosen blocks is installed too, with theta for both halves (_pair):
            # its Linears then multiply the real tokens only, as the perturbed ones do, where its
            # own forward would multiply every padded position of [rows; rows]
            m = leaf.module
            self._installed.append((m, m.__dict__.get("forward")))
            orig = m.forward
            m.forward = lambda *a, _leaf=leaf, _orig=orig, **k: self._call(_leaf, _orig, a, k)
        for root in self.engine.roots:
            self._hooks.append(root.register_forward_pre_hook(self._see_mask, with_kwargs=True))
        return self

    def __exit__(self, *exc):
        for m, had in self._installed:
            if had is None:
                del m.forward
            else:
                m.forward = had
        for h in self._hooks:
            h.remove()
        self._installed, self._hooks, self._tokens = [], [], None

    def _see_mask(self, module, args, kwargs):
        m = kwargs.get("attention_mask")
        if not (isinstance(m, torch.Tensor) and m.dim() == 2):
            self._tokens = None
            return
        rows, T = m.shape
        real = m.reshape(-1) != 0
        index, pieces = [], []
        at = 0
        for h, s in self._parts(rows, True):
            r0 = s.start or 0
            r1 = rows if s.stop is None else s.stop
            sub = real[r0 * T:r1 * T].nonzero().squeeze(1) + r0 * T
            index.append(sub)
            pieces.append((h, slice(at, at + sub.numel())))
            at += sub.numel()
        self._tokens = (tuple(m.shape), torch.cat(index), pieces)

    # -- weights
    def pm(self, name: str, t: torch.Tensor, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(theta + eps z, theta - eps z or None) for the flat elements [lo, hi) of the parameter
        `name` as the leaf sees it (full, i.e. unsharded): z from global indices."""
        dev = t.device
        flat = t.detach().reshape(-1)[lo:hi]
        self.engine.z_elements += hi - lo
        return self.kern.pm(flat, torch.tensor(lo, dtype=torch.int32, device=dev), self._key(name, dev),
                            self._eps_on(dev), dist=self.engine.dist, both=self.dual, generator=self.engine.generator)

    def _key(self, name: str, dev: torch.device) -> torch.Tensor:
        k = self._keys.get(name)
        if k is None:
            k = self._keys[name] = torch.tensor(noise.keys(self.seed, name), dtype=torch.int32, device=dev)
        return k

    def _eps_on(self, dev: torch.device) -> torch.Tensor:
        if self._eps_t is None or self._eps_t.device != dev:
            self._eps_t = torch.tensor(float(self._eps), dtype=torch.float32, device=dev)
        return self._eps_t

    def _parts(self, rows: int, grouped: bool) -> list[tuple[int, slice]]:
        """(sign index, row slice) of each piece of the batch: the [rows; rows] halves with dual,
        each (and a batched forward's rows) in `groups` groups where grouped; else one piece."""
        if not self.split:
            return [(0, slice(None))]
        signs = 2 if self.dual else 1
        if rows % signs:
            raise ValueError(f"dual forward: a leaf got {rows} rows, not [rows; rows]")
        half = rows // signs
        g = self.groups if grouped and half % self.groups == 0 else 1
        n = half // g
        return [(h, slice(h * half + i * n, h * half + (i + 1) * n)) for h in range(signs) for i in range(g)]

    # -- leaves
    def _call(self, leaf: Leaf, orig, args, kwargs):
        if leaf.kind == "linear" and len(args) == 1 and not kwargs:
            return self._linear(leaf, args[0])
        if leaf.kind == "embedding" and len(args) == 1 and not kwargs:
            return self._embedding(leaf, args[0])
        return self._generic(leaf, orig, args, kwargs)

    def _whole(self, leaf: Leaf) -> dict[str, torch.Tensor | None]:
        """The leaf's parameters as whole tensors (gathered once per call if still sharded)."""
        return {attr: None if t is None else _full(t.detach()) for attr, t in leaf.module._parameters.items()}

    def _pair(self, leaf: Leaf, whole: dict, attr: str, lo: int, hi: int):
        """(plus, minus) flat weights of `attr` elements [lo, hi), or the frozen tensor twice."""
        t = whole.get(attr)
        name = self._perturbed(leaf, attr)
        if t is None:
            return None, None
        if name is None:
            flat = t.reshape(-1)[lo:hi]
            return flat, flat
        return self.pm(name, t, lo, hi)

    def _perturbed(self, leaf: Leaf, attr: str) -> str | None:
        """The parameter name of `attr` when this step perturbs it, else None (frozen, or outside
        the step's chosen blocks)."""
        name = dict(leaf.params).get(attr)
        return None if name is not None and self.active is not None and name not in self.active else name

    def _linear(self, leaf: Leaf, x: torch.Tensor) -> torch.Tensor:
        whole = self._whole(leaf)
        W = whole["weight"]
        N, K = W.shape
        tok = self._tokens
        packed = tok is not None and x.dim() == 3 and tuple(x.shape[:2]) == tok[0]
        if packed:  # the real tokens only, group by group
            xs, parts = x.reshape(-1, K).index_select(0, tok[1]), tok[2]
        else:
            xs, parts = x, self._parts(x.shape[0], True)
        # A big weight is perturbed and multiplied in chunks of its rows (each output feature needs
        # only its own row): theta +/- eps z of a chunk is a few MiB instead of two copies of W, and
        # every piece of the batch multiplies it while it is in the last-level cache. A multiple of
        # 256 rows: BLAS sums over K the same way for any number of rows from there (small N takes
        # other kernels). Each product is written in place (addmm / mm, as F.linear calls them),
        # a chunk's into its columns of the output (row stride N: no copy).
        per = max(256, LINEAR_CHUNK // K // 256 * 256) if W.numel() > CHUNK else N
        y = xs.new_empty(*xs.shape[:-1], N)
        x2, y2, inner = xs.reshape(-1, K), y.view(-1, N), xs[:1].numel() // K
        for r0 in range(0, N, per):
            r1 = min(N, r0 + per)
            w, b = self._pair(leaf, whole, "weight", r0 * K, r1 * K), self._pair(leaf, whole, "bias", r0, r1)
            for h, s in parts:
                r = slice((s.start or 0) * inner, (xs.shape[0] if s.stop is None else s.stop) * inner)
                wt = w[h].view(r1 - r0, K).t()
                if b[h] is None:
                    torch.mm(x2[r], wt, out=y2[r, r0:r1])
                else:
                    torch.addmm(b[h], x2[r], wt, out=y2[r, r0:r1])
        if not packed:
            return y
        out = x.new_zeros(x.shape[0] * x.shape[1], N)
        return out.index_copy_(0, tok[1], y).view(*x.shape[:2], N)

    def _embedding(self, leaf: Leaf, ids: torch.Tensor) -> torch.Tensor:
        """Only the looked-up rows of the table are perturbed, all in one kernel call: a batch's
        token ids are spread over the whole table, so a call per run of nearby rows would make
        hundreds of calls per step (BENCHMARKS.md section 1.4)."""
        W = self._whole(leaf)["weight"]
        rows, inv = torch.unique(ids, sorted=True, return_inverse=True)
        name = self._perturbed(leaf, "weight")
        if name is None:
            plus = minus = W.index_select(0, rows)
        else:
            self.engine.z_elements += rows.numel() * W.shape[1]
            plus, minus = self.kern.pm_rows(W, rows, self._key(name, W.device), self._eps_on(W.device),
                                            dist=self.engine.dist, both=self.dual, generator=self.engine.generator)
        tables = [plus] + ([minus] if self.dual else [])
        outs = [F.embedding(inv[s], tables[h]) for h, s in self._parts(ids.shape[0], False)]
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def _generic(self, leaf: Leaf, orig, args, kwargs):
        """Any other leaf: its own forward on each piece of the batch with the parameters swapped
        for the perturbed ones (tensor arguments with the batch's rows are split, others shared)."""
        m = leaf.module
        rows = next((r for r in map(_rows_of, [*args, *kwargs.values()]) if r is not None), None)
        parts = self._parts(rows, leaf.kind != "rowwise") if rows is not None else [(0, slice(None))]
        if self.dual and len(parts) == 1:
            raise ValueError(f"dual forward: {type(m).__name__} got no batch-major tensor argument")
        saved = {attr: t for attr, t in m._parameters.items() if t is not None}
        whole = self._whole(leaf)
        ws = {attr: self._pair(leaf, whole, attr, 0, t.numel()) for attr, t in saved.items()}
        cut = lambda v, s: v[s] if _rows_of(v) == rows else v  # noqa: E731
        outs = []
        try:
            for h, s in parts:
                for attr, t in saved.items():
                    m._parameters[attr] = ws[attr][h].view(t.shape)
                outs.append(orig(*[cut(a, s) for a in args], **{k: cut(v, s) for k, v in kwargs.items()}))
        finally:
            for attr, t in saved.items():
                m._parameters[attr] = t
        if len(outs) == 1:
            return outs[0]
        if not all(isinstance(o, torch.Tensor) for o in outs):
            raise ValueError(f"dual forward: {type(m).__name__} returns {type(outs[0]).__name__}, not a tensor")
        return torch.cat(outs)


# ---------------------------------------------------------------------------- the engine
@dataclass
class ZOEngine:
    """Perturbs and updates trainable parameters from seeds. See the module docstring."""
    slots: list[Slot]
    dist: str = "gaussian"
    backend: str = "eager"       # "eager" | "compile" | "triton"
    fused: bool = True
    numerics: str = "reference"  # "reference" | "master" | "stochastic"
    leaves: list[Leaf] = field(default_factory=list)  # stochastic: where the dual forward perturbs
    roots: list[nn.Module] = field(default_factory=list)  # stochastic: the modules called with the attention mask
    row_groups: int = 1          # stochastic: groups of rows per half of a dual forward (see Perturbation)
    generator: str = noise.DEFAULT_GENERATOR  # z's generator (mezo.noise.GENERATORS)
    # seed -> the names of the parameters direction z(seed) covers (block-sparse methods,
    # mezo.methods.BlockSelector); z is 0 elsewhere, so sweeps skip them. None: every parameter
    select: Callable[[int], frozenset] | None = field(default=None, repr=False)
    # what is currently applied to the parameters on top of theta: (seed, displacement)
    _offset: tuple[int, float] | None = field(default=None, repr=False)
    # update not yet applied: (seeds, coefficients, lr, wd)
    _pending: tuple[list[int], list[float], float, float] | None = field(default=None, repr=False)
    # the last step's time split (seconds): "forward" (the loss functions, including the dual
    # forward's in-forward perturbation) and "sweep" (everything else the engine did)
    timing: dict = field(default_factory=dict, repr=False)
    z_elements: int = field(default=0, repr=False)  # elements whose z was generated (all kernels)

    @property
    def master_weights(self) -> bool:
        return self.numerics == "master"

    @classmethod
    def from_model(cls, model: torch.nn.Module, *, dist="gaussian", backend="auto", fused=True,
                   master_weights=False, numerics: str | None = None, decay=None, row_groups: int = 1, params=None,
                   generator=noise.DEFAULT_GENERATOR):
        """numerics: "reference" | "master" | "stochastic" (default: "master" with master_weights,
        else "reference"); decay(name) -> bool: which parameters get weight decay (default: not
        biases and norms); row_groups: see Perturbation (the trainer passes the number of forwards
        a rank's share of the batch would otherwise take)."""
        numerics = numerics or ("master" if master_weights else "reference")
        if numerics not in NUMERICS:
            raise ValueError(f"numerics must be one of {NUMERICS}, got {numerics!r}")
        if dist not in noise.DISTRIBUTIONS:
            raise ValueError(f"--zo_dist must be one of {noise.DISTRIBUTIONS}, got {dist!r}")
        decay = decay or (lambda n: not no_decay(n))
        named = params if params is not None else [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        decays = decay if decay is not None else (lambda n: not no_decay(n))
        slots = []
        for name, p in named:
            local, start = local_view(p)
            if local.numel() == 0:
                continue
            master = local.detach().float().clone() if numerics == "master" else None
            slots.append(Slot(name, local, start, bool(decay(name)), master))
        found = []
        if numerics == "stochastic":
            found, missing = leaves(model, {id(p): n for n, p in named})
            if missing:
                raise ValueError(f"numerics 'stochastic' perturbs parameters inside the modules that use them; "
                                 f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''} "
                                 f"{'is' if len(missing) == 1 else 'are'} not owned by such a module "
                                 f"(use numerics 'master' or 'reference')")
        device = slots[0].local.device if slots else torch.device("cpu")
        base = getattr(model, getattr(model, "base_model_prefix", "") or "", None)  # Hugging Face: the body
        roots = [model] + ([base] if isinstance(base, nn.Module) and base is not model else [])
        return cls(slots, dist, resolve_backend(backend, device), fused, numerics, found, roots, max(1, int(row_groups)),
                   noise.check_generator(generator))

    @property
    def device(self) -> torch.device:
        return self.slots[0].local.device if self.slots else torch.device("cpu")

    def state_bytes(self) -> int:
        """Persistent memory this rank's engine holds beyond the weights (the fp32 masters)."""
        return sum(s.master.numel() * s.master.element_size() for s in self.slots if s.master is not None)

    @property
    def needs_check(self) -> bool:
        """Whether this engine's kernels get the parity self-check before a run: those built for
        this machine and not run by this project's tests here (any kernel on a GPU; the C kernels
        built for this CPU)."""
        return self.device.type == "cuda" or self.backend == "native"

    def check_backend(self, compare=agree) -> list[str]:
        """Run the parity self-check of this engine's backend (mezo.zo.select_backend), falling
        back to the next backend on a failure; returns the failures met ([] when none)."""
        self.backend, failures = select_backend(self.backend, self.device, self.dist, self.numerics, compare,
                                                self.generator)
        return failures

    # ------------------------------------------------------------------ low level
    def _tensors(self):
        dev = self.device
        return (lambda v: torch.tensor(float(v), dtype=torch.float32, device=dev),
                lambda seed, name: torch.tensor(noise.keys(seed, name), dtype=torch.int32, device=dev))

    def covers(self, seed: int, name: str) -> bool:
        """Whether direction z(seed) is non-zero on parameter `name` (always, without select)."""
        return self.select is None or name in self.select(seed)

    def _restrict(self, name: str, restore, update, perturb):
        """restore / update / perturb as they apply to parameter `name` under select: the
        directions that do not cover it dropped (None when none is left)."""
        r = restore if restore and self.covers(restore[0], name) else None
        u = None
        if update:
            js = [j for j, s in enumerate(update[0]) if self.covers(s, name)]
            u = ([update[0][j] for j in js], [update[1][j] for j in js], update[2], update[3]) if js else None
        p = perturb if perturb and self.covers(perturb[0], name) else None
        return r, u, p

    def _sweep_args(self, restore, update, perturb) -> dict:
        f32, _ = self._tensors()
        n_update = len(update[0]) if update else 0
        return dict(n_update=n_update,
                    cu=f32(0) if not n_update else torch.tensor([float(c) for c in update[1]], dtype=torch.float32,
                                                                device=self.device),
                    lr=f32(update[2] if update else 0.0), ar=f32(restore[1] if restore else 0.0),
                    bp=f32(perturb[1] if perturb else 0.0), wd_on=f32(update[3] if update else 0.0), wd_off=f32(0.0),
                    share_z=bool(restore and n_update and restore[0] == update[0][0]))

    def _sweep(self, restore=None, update=None, perturb=None, written=None):
        """One pass over every slot (master, reference). restore=(seed, coef); update=(seeds,
        coefs, lr, wd); perturb=(seed, coef): add coef*z in place, or (master) write theta + coef*z.
        With select (block-sparse methods) each slot gets only the directions that cover it and
        slots no direction covers are not touched; written: master, the seed of the perturbation
        the parameters hold now (the slots it covers are rewritten even with nothing else to do)."""
        if not self.slots:
            return
        kernel = kernels(self.backend).sweep
        dev = self.device
        _, keys = self._tensors()
        zero_k = torch.zeros(4, dtype=torch.int32, device=dev)
        common = self._sweep_args(restore, update, perturb) if self.select is None else None
        for slot in self.slots:
            if self.select is None:
                r, u, pt, a = restore, update, perturb, common
            else:
                r, u, pt = self._restrict(slot.name, restore, update, perturb)
                rewrite = written is not None and slot.master is not None and self.covers(written, slot.name)
                if r is None and u is None and pt is None and not rewrite:
                    continue
                a = self._sweep_args(r, u, pt)
            n_update, share_z = a["n_update"], a["share_z"]
            kr = keys(r[0], slot.name) if r else zero_k
            ku = torch.stack([keys(s, slot.name) for s in u[0]]) if n_update else zero_k[None]
            kp = keys(pt[0], slot.name) if pt else zero_k
            x = slot.master if slot.master is not None else slot.local
            out = slot.local if slot.master is not None else None
            rounding = x.dtype != torch.float32
            for c0 in range(0, x.numel(), CHUNK):
                c1 = min(c0 + CHUNK, x.numel())
                self.z_elements += (c1 - c0) * (int(r is not None and not share_z) + n_update
                                                + int(pt is not None))
                kernel(x[c0:c1], out[c0:c1] if out is not None else None,
                       torch.tensor(slot.start + c0, dtype=torch.int32, device=dev),
                       kr, a["ar"], ku, a["cu"], a["lr"], a["wd_on"] if slot.decay else a["wd_off"], kp, a["bp"],
                       dist=self.dist, rounding=rounding, restore=r is not None,
                       n_update=n_update, perturb=pt is not None, write_out=out is not None,
                       share_z=share_z, generator=self.generator)

    def _update_sweep(self, seeds, coefs, lr, wd):
        """stochastic: theta <- round(theta - lr * (sum_j coefs_j z(s_j) + wd * theta)) over the
        local shards (global indices), rounding bits under the keys of (seeds[0], name + "#sr");
        with select, each slot takes the directions that cover it (bits under the first's keys)."""
        if not self.slots:
            return
        kernel = kernels(self.backend).update
        dev = self.device
        f32, keys = self._tensors()
        cu = torch.tensor([float(c) for c in coefs], dtype=torch.float32, device=dev)
        lr_t, wd_on, wd_off = f32(lr), f32(wd), f32(0.0)
        for slot in self.slots:
            ss, cs = seeds, cu
            if self.select is not None:
                _, u, _ = self._restrict(slot.name, None, (seeds, coefs, lr, wd), None)
                if u is None:
                    continue
                ss, cs = u[0], torch.tensor([float(c) for c in u[1]], dtype=torch.float32, device=dev)
            ku = torch.stack([keys(s, slot.name) for s in ss])
            ksr = keys(ss[0], slot.name + "#sr")
            x = slot.local
            sr = x.dtype in (torch.bfloat16, torch.float16)
            for c0 in range(0, x.numel(), CHUNK):
                c1 = min(c0 + CHUNK, x.numel())
                self.z_elements += (c1 - c0) * len(ss)
                kernel(x[c0:c1], torch.tensor(slot.start + c0, dtype=torch.int32, device=dev), ku, cs, lr_t,
                       wd_on if slot.decay else wd_off, ksr, dist=self.dist, n_update=len(ss), sr=sr,
                       generator=self.generator)

    # ------------------------------------------------------------------ MeZO operations
    def perturbation(self, seed: int, eps: float, dual: bool = True, batched: bool = False) -> Perturbation:
        """stochastic: the context in which forwards see theta +/- eps z(seed) (see Perturbation)."""
        return Perturbation(self, seed, eps, dual, batched)

    def displace(self, seed: int, d: float):
        """Move the parameters to theta + d * z(seed), applying any pending update first
        (master, reference: the stochastic numerics never moves the stored parameters)."""
        if self.numerics == "stochastic":
            raise RuntimeError("numerics 'stochastic' does not perturb the stored parameters (use perturbation())")
        restore = None
        if self.master_weights:
            upd, self._pending = self._pending, None
            self._sweep(update=upd, perturb=(seed, d), written=self._offset[0] if self._offset else None)
            self._offset = (seed, d)
            return
        if self._offset is not None and self._offset[0] == seed and self._pending is None:
            self._sweep(perturb=(seed, d - self._offset[1]))   # e.g. +eps -> -eps adds -2 eps z
            self._offset = (seed, d)
            return
        if self._offset is not None:
            restore = (self._offset[0], -self._offset[1])
        upd, self._pending = self._pending, None
        if self.fused:
            self._sweep(restore=restore, update=upd, perturb=(seed, d))
        else:
            if restore:
                self._sweep(restore=restore)
            if upd:
                self._sweep(update=upd)
            self._sweep(perturb=(seed, d))
        self._offset = (seed, d)

    def schedule_update(self, seeds: list[int], grads: list[float], lr: float, wd: float):
        """theta <- theta - lr * (mean_j g_j z(s_j) + wd * theta), applied lazily (fused)."""
        n = len(seeds)
        self.schedule_coefficients(seeds, [g / n for g in grads], lr, wd)
        if not self.fused:
            self.flush()

    def schedule_coefficients(self, seeds: list[int], coefs: list[float], lr: float, wd: float):
        """theta <- theta - lr * (sum_j coefs_j z(s_j) + wd * theta), applied with the next sweep;
        coefs are the projected gradients already divided by their number (what a trajectory
        stores), so a replay applies the very floats training did."""
        self._pending = (list(seeds), [float(c) for c in coefs], float(lr), float(wd))

    def drop_update(self):
        """Forget the scheduled update (a non-finite step); a perturbation is still undone."""
        self._pending = None

    def flush(self):
        """Apply everything pending and leave the parameters at exactly theta (before eval/save)."""
        if self.numerics == "stochastic":
            upd, self._pending = self._pending, None
            if upd:
                self._update_sweep(*upd)
            return
        restore = None
        if self._offset is not None and not self.master_weights:
            restore = (self._offset[0], -self._offset[1])
        if restore is None and self._pending is None and not (self.master_weights and self._offset):
            return
        upd, self._pending = self._pending, None
        if self.master_weights:
            if upd:
                self._sweep(update=upd, perturb=None, written=self._offset[0] if self._offset else None)
            else:
                self.write_master()
        elif self.fused:
            self._sweep(restore=restore, update=upd)
        else:
            if restore:
                self._sweep(restore=restore)
            if upd:
                self._sweep(update=upd)
        self._offset = None

    def write_master(self):
        """Parameters <- cast(master) (after the masters were loaded from a checkpoint)."""
        for slot in self.slots:
            slot.local.copy_(slot.master.to(slot.local.dtype))

    @property
    def clean(self) -> bool:
        """True when the parameters hold theta (no perturbation or update pending)."""
        return self._offset is None and self._pending is None

    def _sync(self):
        if self.device.type == "cuda":  # so that the time split counts the kernels, not their launch
            torch.cuda.synchronize(self.device)

    def stopwatch(self):
        """lap() -> seconds since the previous lap (or since this call), the device synchronised
        first, so that each lap is charged with its own kernels (a step's time split)."""
        t = time.perf_counter()

        def lap() -> float:
            nonlocal t
            self._sync()
            now = time.perf_counter()
            dt, t = now - t, now
            return dt
        return lap

    @torch.no_grad()  # forward passes only: no autograd graph, inference memory
    def step(self, loss_fn, seeds: list[int], lr: float, eps: float, wd: float,
             pair_fn=None) -> tuple[list[float], list[tuple[float, float]]]:
        """One MeZO step with len(seeds) directions (n-SPSA). loss_fn() must return the same
        float on every rank. numerics "stochastic" with fused sweeps and a pair_fn: pair_fn()
        runs the batch once, duplicated along dim 0, and returns (L+, L-) (the dual forward);
        otherwise loss_fn runs once per sign. Returns (projected gradients, (L+, L-) per
        direction); the time split is left in self.timing."""
        grads, losses = [], []
        fwd = sweep = 0.0
        lap = self.stopwatch()
        if self.numerics == "stochastic":
            self.flush()  # the previous step's update (z evaluation 2)
            sweep += lap()
            for seed in seeds:
                if pair_fn is not None and self.fused:
                    with self.perturbation(seed, eps, dual=True):
                        lp, lm = pair_fn()
                else:
                    with self.perturbation(seed, eps, dual=False):
                        lp = loss_fn()
                    with self.perturbation(seed, -eps, dual=False):
                        lm = loss_fn()
                fwd += lap()
                grads.append((lp - lm) / (2 * eps))
                losses.append((lp, lm))
        else:
            for seed in seeds:
                self.displace(seed, +eps)
                sweep += lap()
                lp = loss_fn()
                fwd += lap()
                self.displace(seed, -eps)
                sweep += lap()
                lm = loss_fn()
                fwd += lap()
                grads.append((lp - lm) / (2 * eps))
                losses.append((lp, lm))
        self.schedule_update(seeds, grads, lr, wd)
        sweep += lap()
        self.timing = {"forward": fwd, "sweep": sweep}
        return grads, losses

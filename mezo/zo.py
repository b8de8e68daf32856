"""The MeZO engine: seed-replayed perturbations and SGD updates of (sharded) parameters.

One MeZO step with step seed s (Malladi et al., 2023, Algorithm 1):

    theta += eps * z(s)      ; L+ = loss
    theta -= 2 * eps * z(s)  ; L- = loss
    theta += eps * z(s)                                   (restore)
    g = (L+ - L-) / (2 eps)
    theta -= lr * (g * z(s) + wd * theta)                 (update; wd = 0 for biases and norms)

z is never stored: `mezo.noise` regenerates any slice of it from (s, parameter name, element
index), so each rank touches only its own shard and the result does not depend on sharding.

Sweeps are fused. The engine keeps the restore and the update *pending* and applies them in
the same pass as the next step's +eps perturbation, so a step costs two passes over the
parameters instead of four. Every element still goes through the same floating-point
operations in the same order as the plain algorithm (`fused=False`), so both give the same
bits. With master weights (default for bf16/fp16) an fp32 copy `theta` of each trainable
shard is the state, perturbed parameters are written as cast(theta + d * z), and nothing
needs restoring at all.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from mezo import noise

CHUNK = 1 << 22  # elements per kernel call (bounds the eager path's temporaries)


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


def _sweep_kernel(x, out, idx0, kr, ar, ku, cu, lr, wd, kp, bp, *, dist, rounding,
                  restore: bool, n_update: int, perturb: bool, write_out: bool, share_z: bool = False,
                  generator: str = noise.DEFAULT_GENERATOR):
    """x: state (param shard or fp32 master), updated in place; out: param shard (master mode).

    x <- x + ar * z(kr)                                    if restore
    x <- x - lr * (sum_j cu[j] * z(ku[j]) + wd * x)         if n_update
    master mode:  out <- cast(x + bp * z(kp))   (or cast(x) without perturb)
    in place:     x <- x + bp * z(kp)                       if perturb
    Each step is rounded to x's dtype when x is not fp32 (`rounding`), as separate sweeps would.
    share_z: the restore and the first update use the same seed (the fused schedule, n = 1), so
    z is generated once for both: the same values, one z evaluation fewer per element.
    """
    idx = torch.arange(x.numel(), dtype=torch.int32, device=x.device) + idx0
    v = x.float()

    def rnd(t):
        return t.to(x.dtype).float() if rounding else t

    zr = None
    if restore:
        zr = noise.z_from_index(idx, kr, dist, generator)
        v = rnd(v + ar * zr)
    if n_update:
        s = cu[0] * (zr if share_z and zr is not None else noise.z_from_index(idx, ku[0], dist, generator))
        for j in range(1, n_update):
            s = s + cu[j] * noise.z_from_index(idx, ku[j], dist, generator)
        v = rnd(v - lr * (s + wd * v))
    if write_out:
        if restore or n_update:
            x.copy_(v)
        p = v + bp * noise.z_from_index(idx, kp, dist, generator) if perturb else v
        out.copy_(p.to(out.dtype))
    elif perturb:
        x.copy_((v + bp * noise.z_from_index(idx, kp, dist, generator)).to(x.dtype))
    elif restore or n_update:
        x.copy_(v.to(x.dtype))


_COMPILED = None


def _compiled_kernel():
    global _COMPILED
    if _COMPILED is None:
        import torch._dynamo
        import torch._inductor.config
        # keep x.to(bf16).float() roundings, so fused == unfused bit for bit in low precision
        torch._inductor.config.emulate_precision_casts = True
        # one graph per (flags, dtype) combination: a handful per run
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        torch._dynamo.config.accumulated_recompile_limit = max(torch._dynamo.config.accumulated_recompile_limit, 512)
        _COMPILED = torch.compile(_sweep_kernel, dynamic=True, fullgraph=True)
    return _COMPILED


def resolve_backend(backend: str, device: torch.device) -> str:
    """'auto' -> 'triton' (hand-written kernel, mezo/noise_triton.py) on a CUDA device when
    Triton is installed, else 'compile' (generated fused kernel: C++ on CPU), else as given."""
    if backend == "triton" or (backend == "auto" and device.type == "cuda"):
        from mezo import noise_triton
        if noise_triton.available():
            return "triton"
        if backend == "triton":
            raise ValueError("--zo_backend triton needs the triton package and a CUDA device")
    if backend != "auto":
        return backend
    try:
        import torch._inductor  # noqa: F401
    except Exception:  # pragma: no cover - torch without inductor
        return "eager"
    return "compile"


@dataclass
class ZOEngine:
    """Perturbs and updates trainable parameters from seeds. See the module docstring."""
    slots: list[Slot]
    dist: str = "gaussian"
    backend: str = "eager"       # "eager" | "compile" | "triton"
    fused: bool = True
    master_weights: bool = False
    generator: str = noise.DEFAULT_GENERATOR  # z's generator (mezo.noise.GENERATORS)
    # what is currently applied to the parameters on top of theta: (seed, displacement)
    _offset: tuple[int, float] | None = field(default=None, repr=False)
    # update not yet applied: (seeds, coefficients, lr, wd)
    _pending: tuple[list[int], list[float], float, float] | None = field(default=None, repr=False)

    @classmethod
    def from_model(cls, model: torch.nn.Module, *, dist="gaussian", backend="auto", fused=True,
                   master_weights=False, params=None, decay=None, generator=noise.DEFAULT_GENERATOR):
        """decay: name -> whether weight decay applies (default: not biases and norms, no_decay)."""
        named = params if params is not None else [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        decays = decay if decay is not None else (lambda n: not no_decay(n))
        slots = []
        for name, p in named:
            local, start = local_view(p)
            if local.numel() == 0:
                continue
            master = local.detach().float().clone() if master_weights else None
            slots.append(Slot(name, local, start, bool(decays(name)), master))
        device = slots[0].local.device if slots else torch.device("cpu")
        if dist not in noise.DISTRIBUTIONS:
            raise ValueError(f"--zo_dist must be one of {noise.DISTRIBUTIONS}, got {dist!r}")
        return cls(slots, dist, resolve_backend(backend, device), fused, master_weights, noise.check_generator(generator))

    # ------------------------------------------------------------------ low level
    def _sweep(self, restore=None, update=None, perturb=None):
        """One pass over every slot. restore=(seed, coef); update=(seeds, coefs, lr, wd);
        perturb=(seed, coef): add coef*z in place, or (master mode) write theta + coef*z."""
        kernel = _compiled_kernel() if self.backend == "compile" else _sweep_kernel
        if self.backend == "triton":
            from mezo.noise_triton import triton_sweep as kernel
        if not self.slots:
            return
        dev = self.slots[0].local.device
        f32 = lambda v: torch.tensor(float(v), dtype=torch.float32, device=dev)  # noqa: E731
        zero_k = torch.zeros(4, dtype=torch.int32, device=dev)
        n_update = len(update[0]) if update else 0
        cu = f32(0) if not n_update else torch.tensor([float(c) for c in update[1]], dtype=torch.float32, device=dev)
        lr = f32(update[2] if update else 0.0)
        ar = f32(restore[1] if restore else 0.0)
        bp = f32(perturb[1] if perturb else 0.0)
        wd_on, wd_off = f32(update[3] if update else 0.0), f32(0.0)
        share_z = bool(restore and n_update and restore[0] == update[0][0])
        for slot in self.slots:
            keys = lambda seed: torch.tensor(noise.keys(seed, slot.name), dtype=torch.int32, device=dev)  # noqa: E731
            kr = keys(restore[0]) if restore else zero_k
            ku = torch.stack([keys(s) for s in update[0]]) if n_update else zero_k[None]
            kp = keys(perturb[0]) if perturb else zero_k
            x = slot.master if slot.master is not None else slot.local
            out = slot.local if slot.master is not None else None
            rounding = x.dtype != torch.float32
            for c0 in range(0, x.numel(), CHUNK):
                c1 = min(c0 + CHUNK, x.numel())
                kernel(x[c0:c1], out[c0:c1] if out is not None else None,
                       torch.tensor(slot.start + c0, dtype=torch.int32, device=dev),
                       kr, ar, ku, cu, lr, wd_on if slot.decay else wd_off, kp, bp,
                       dist=self.dist, rounding=rounding, restore=restore is not None,
                       n_update=n_update, perturb=perturb is not None, write_out=out is not None,
                       share_z=share_z, generator=self.generator)

    # ------------------------------------------------------------------ MeZO operations
    def displace(self, seed: int, d: float):
        """Move the parameters to theta + d * z(seed), applying any pending update first."""
        restore = None
        if self.master_weights:
            upd, self._pending = self._pending, None
            self._sweep(update=upd, perturb=(seed, d))
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
        restore = None
        if self._offset is not None and not self.master_weights:
            restore = (self._offset[0], -self._offset[1])
        if restore is None and self._pending is None and not (self.master_weights and self._offset):
            return
        upd, self._pending = self._pending, None
        if self.master_weights:
            self._sweep(update=upd, perturb=None) if upd else self.write_master()
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

    @torch.no_grad()  # forward passes only: no autograd graph, inference memory
    def step(self, loss_fn, seeds: list[int], lr: float, eps: float, wd: float) -> tuple[list[float], list[tuple[float, float]]]:
        """One MeZO step with len(seeds) directions (n-SPSA). loss_fn() must return the same
        float on every rank. Returns (projected gradients, (L+, L-) per direction)."""
        grads, losses = [], []
        for seed in seeds:
            self.displace(seed, +eps)
            lp = loss_fn()
            self.displace(seed, -eps)
            lm = loss_fn()
            grads.append((lp - lm) / (2 * eps))
            losses.append((lp, lm))
        self.schedule_update(seeds, grads, lr, wd)
        return grads, losses

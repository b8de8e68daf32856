"""mezo/noise_triton.py vs the eager CPU path, run with Triton's interpreter (no GPU needed)."""
import importlib
import os

import pytest
import torch

try:
    import triton  # noqa: F401
except Exception as e:  # pragma: no cover
    pytest.skip(f"triton cannot be imported: {e}", allow_module_level=True)

from mezo import noise, zo

F32 = lambda v: torch.tensor(float(v), dtype=torch.float32)  # noqa: E731
# Gaussian z through two math libraries: Triton's interpreter evaluates Box-Muller's log, sqrt
# and cos with numpy, the eager path with ATen's vectorised functions, each within 1 ulp, so z
# agrees to a few ulp (measured: <= 3 ulp, 4.8e-7 absolute at |z| <= 3.9). rtol 1e-6 is 8 ulp
# of fp32 (2^-23 = 1.2e-7); atol 1e-6 covers z near 0, whose error follows the cos factor.
Z_RTOL = Z_ATOL = 1e-6


@pytest.fixture(scope="module")
def nt():
    """mezo.noise_triton with its kernels built in interpreter mode (TRITON_INTERPRET=1)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRITON_INTERPRET", "1")
        import mezo.noise_triton as mod
        yield importlib.reload(mod)  # jit decorators read TRITON_INTERPRET at definition time


def keys(seed, name="layer.weight"):
    return torch.tensor(noise.keys(seed, name), dtype=torch.int32)


def run_both(nt, x, out, start, *, dist, restore=None, update=None, perturb=None):
    """Apply one sweep with zo._sweep_kernel and with triton_sweep (on copies); return both results."""
    n_update = len(update[0]) if update else 0
    args = (F32(0) if not n_update else torch.tensor(update[1], dtype=torch.float32),
            F32(update[2] if update else 0), F32(update[3] if update else 0))
    kw = dict(dist=dist, rounding=x.dtype != torch.float32, restore=restore is not None, n_update=n_update,
              perturb=perturb is not None, write_out=out is not None)
    kr = keys(restore[0]) if restore else torch.zeros(4, dtype=torch.int32)
    ku = torch.stack([keys(s) for s in update[0]]) if update else torch.zeros(1, 4, dtype=torch.int32)
    kp = keys(perturb[0]) if perturb else torch.zeros(4, dtype=torch.int32)
    ar, bp = F32(restore[1] if restore else 0), F32(perturb[1] if perturb else 0)
    res = []
    for fn in (zo._sweep_kernel, nt.triton_sweep):
        xc, oc = x.clone(), out.clone() if out is not None else None
        fn(xc, oc, torch.tensor(start, dtype=torch.int32), kr, ar, ku, args[0], args[1], args[2], kp, bp, **kw)
        res.append((xc, oc))
    return res


@pytest.mark.parametrize("start", [0, 777])
def test_rademacher_bit_exact(nt, start):
    n = 3000  # not a multiple of the block
    x = torch.zeros(n)
    nt.triton_sweep(x, None, start, noise.keys(5, "w"), 0.0, [[0] * 4], [0.0], 0.0, 0.0, noise.keys(5, "w"), 1.0,
                    dist="rademacher", rounding=False, restore=False, n_update=0, perturb=True, write_out=False)
    assert torch.equal(x, noise.generate(5, "w", start, n, "rademacher"))


def test_gaussian_close(nt):
    n, start = 4096, 12345
    x = torch.zeros(n)
    nt.triton_sweep(x, None, start, noise.keys(9, "w"), 0.0, [[0] * 4], [0.0], 0.0, 0.0, noise.keys(9, "w"), 1.0,
                    dist="gaussian", rounding=False, restore=False, n_update=0, perturb=True, write_out=False)
    ref = noise.generate(9, "w", start, n, "gaussian")
    torch.testing.assert_close(x, ref, rtol=Z_RTOL, atol=Z_ATOL)
    assert 0.9 < ref.std() < 1.1


def test_fused_restore_update_perturb_bf16_exact(nt):
    """In-place bf16 shard with per-op rounding: restore + 2-direction update + perturb, bit for bit."""
    x = torch.randn(2500).to(torch.bfloat16)
    (a, _), (b, _) = run_both(nt, x, None, 300, dist="rademacher", restore=(11, -1e-3),
                              update=([11, 12], [0.5, -0.25], 1e-2, 0.1), perturb=(13, 1e-3))
    assert b.dtype == torch.bfloat16 and torch.equal(a, b)


@pytest.mark.parametrize("dist", ["gaussian", "rademacher"])
def test_fused_sweep_fp32(nt, dist):
    x = torch.randn(2500)
    (a, _), (b, _) = run_both(nt, x, None, 0, dist=dist, restore=(3, -1e-3),
                              update=([3], [2.0], 1e-3, 0.01), perturb=(4, 2e-3))
    if dist == "rademacher":
        assert torch.equal(a, b)
    torch.testing.assert_close(a, b, rtol=Z_RTOL, atol=Z_ATOL)  # z enters scaled by 2e-3: x differs by at most its last bit


@pytest.mark.parametrize("dist", ["gaussian", "rademacher"])
def test_master_mode_bf16_out(nt, dist):
    """fp32 master x updated in place, bf16 parameter written as cast(x + b z)."""
    x, out = torch.randn(2000), torch.zeros(2000, dtype=torch.bfloat16)
    (xa, oa), (xb, ob) = run_both(nt, x, out, 4096, dist=dist, update=([21, 22], [1.0, 3.0], 1e-2, 0.0),
                                  perturb=(23, -1e-3))
    if dist == "rademacher":
        assert torch.equal(xa, xb) and torch.equal(oa, ob)
    torch.testing.assert_close(xa, xb, rtol=Z_RTOL, atol=Z_ATOL)
    torch.testing.assert_close(ob.float(), oa.float(), rtol=2 ** -8, atol=0)  # at most one bf16 ulp apart
    # flush-style sweep: out <- cast(x), no noise; x untouched
    (xa, oa), (xb, ob) = run_both(nt, x, out, 0, dist=dist)
    assert torch.equal(oa, ob) and torch.equal(xb, x)


def test_shards_compose(nt):
    """Two shards with their own start give the slices of the unsharded sweep."""
    x = torch.randn(3000).to(torch.bfloat16)
    kw = dict(dist="rademacher", restore=(1, -1e-2), update=([2], [1.0], 1e-2, 0.1), perturb=(2, 1e-2))
    (full, _), _ = run_both(nt, x, None, 0, **kw)
    for lo, hi in [(0, 1100), (1100, 3000)]:
        _, (part, _) = run_both(nt, x[lo:hi].clone(), None, lo, **kw)
        assert torch.equal(part, full[lo:hi])


@pytest.mark.parametrize("master", [False, True])
def test_engine_drop_in(nt, master, monkeypatch):
    """ZOEngine steps with triton_sweep in place of _sweep_kernel give the same bf16 parameters."""
    def model():
        torch.manual_seed(0)
        m = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.LayerNorm(32), torch.nn.Linear(32, 4))
        return m.to(torch.bfloat16)

    results = []
    for kernel in (zo._sweep_kernel, nt.triton_sweep):
        monkeypatch.setattr(zo, "_sweep_kernel", kernel)
        m = model()
        eng = zo.ZOEngine.from_model(m, dist="rademacher", backend="eager", master_weights=master)
        inp = torch.randn(8, 16, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
        for step in range(3):
            eng.step(lambda: m(inp).float().pow(2).mean().item(), [100 + 2 * step, 101 + 2 * step], 1e-2, 1e-3, 0.1)
        eng.flush()
        results.append([p.detach().clone() for p in m.parameters()])
    for a, b in zip(*results):
        assert torch.equal(a, b)


# ---------------------------------------------------------------- generators (mezo/noise.py GENERATORS)
@pytest.mark.parametrize("generator", list(noise.GENERATORS))
@pytest.mark.parametrize("dist", ["gaussian", "rademacher"])
def test_z_range_matches_pytorch(nt, generator, dist):
    k = keys(9, "w")
    for start in (0, 12345, 2 ** 31 - 3000):  # up to the last int32 index
        got = nt.triton_z_range(start, 3000, k, dist, generator)
        want = noise.z_range(torch.tensor(start, dtype=torch.int32), 3000, k, dist, generator)
        if dist == "rademacher" or generator == "lowbias32-poly-v2":
            assert torch.equal(got, want)  # integer bits, or IEEE float32 ops and sqrt_rn only
        else:
            torch.testing.assert_close(got, want, rtol=Z_RTOL, atol=Z_ATOL)


@pytest.mark.parametrize("generator", list(noise.GENERATORS))
def test_bits_range_matches_pytorch(nt, generator):
    k = keys(4, "w#sr")
    got = nt.triton_bits_range(777, 3000, k, generator)
    assert got.dtype == torch.int32
    assert torch.equal(got, noise.bits_range(torch.tensor(777, dtype=torch.int32), 3000, k, generator))


@pytest.mark.parametrize("generator", list(noise.GENERATORS))
def test_sweep_uses_the_selected_generator(nt, generator):
    """restore + 2-direction update + perturb in fp32 with Gaussian z: v2 bit for bit."""
    x = torch.randn(2500)
    kw = dict(dist="gaussian", rounding=False, restore=True, n_update=2, perturb=True, write_out=False,
              generator=generator)
    args = (torch.tensor(300, dtype=torch.int32), keys(1), F32(-1e-3), torch.stack([keys(1), keys(2)]),
            torch.tensor([0.5, -0.25]), F32(1e-2), F32(0.1), keys(3), F32(1e-3))
    a, b = x.clone(), x.clone()
    zo._sweep_kernel(a, None, *args, **kw)
    nt.triton_sweep(b, None, *args, **kw)
    if generator == "lowbias32-poly-v2":
        assert torch.equal(a, b)
    else:
        torch.testing.assert_close(a, b, rtol=Z_RTOL, atol=Z_ATOL)
    c = x.clone()
    nt.triton_sweep(c, None, *args, **{**kw, "generator": "lowbias32-poly-v2" if generator == "lowbias32-v1" else "lowbias32-v1"})
    assert not torch.equal(c, b)  # the generator is really selected


# ---------------------------------------------------------------------------- numerics "stochastic"
I32 = lambda v: torch.tensor(v, dtype=torch.int32)  # noqa: E731


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("dist", ["gaussian", "rademacher"])
def test_dual_forward_weights(nt, dist, dtype):
    """triton_pm == zo._pm_kernel: theta + eps z and theta - eps z from one z, cast once."""
    theta = torch.randn(3000).to(dtype)
    want = zo._pm_kernel(theta, I32(777), I32(noise.keys(5, "w")), F32(1e-2), dist=dist, both=True)
    got = nt.triton_pm(theta, 777, noise.keys(5, "w"), 1e-2, dist=dist, both=True)
    one = nt.triton_pm(theta, 777, noise.keys(5, "w"), -1e-2, dist=dist, both=False)
    for a, b in zip(got, want):
        assert a.dtype == dtype
        if dist == "rademacher":
            assert torch.equal(a, b)
        elif dtype == torch.float32:
            torch.testing.assert_close(a, b, rtol=Z_RTOL, atol=Z_ATOL)
        else:  # z within 1e-6 can cross a rounding boundary: at most one ulp of the cast apart
            torch.testing.assert_close(a.float(), b.float(), rtol=2 ** -7, atol=0)
    assert one[1] is None and torch.equal(one[0], got[1])  # theta + (-eps) z == theta - eps z


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("dist", ["gaussian", "rademacher"])
def test_embedding_rows(nt, dist, dtype):
    """triton_pm_rows == zo._pm_rows_kernel: the looked-up rows of a table, z from row * D + column."""
    table = torch.randn(60, 50).to(dtype)
    rows = torch.tensor([0, 1, 2, 33, 59])
    want = zo._pm_rows_kernel(table, rows, I32(noise.keys(5, "emb")), F32(1e-2), dist=dist, both=True)
    got = nt.triton_pm_rows(table, rows, noise.keys(5, "emb"), 1e-2, dist=dist, both=True)
    one = nt.triton_pm_rows(table, rows, noise.keys(5, "emb"), -1e-2, dist=dist, both=False)
    for a, b in zip(got, want):
        assert a.shape == b.shape == (5, 50) and a.dtype == dtype
        if dist == "rademacher":
            assert torch.equal(a, b)
        elif dtype == torch.float32:
            torch.testing.assert_close(a, b, rtol=Z_RTOL, atol=Z_ATOL)
        else:  # as test_dual_forward_weights: at most one ulp of the cast apart
            torch.testing.assert_close(a.float(), b.float(), rtol=2 ** -7, atol=0)
    assert one[1] is None and torch.equal(one[0], got[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n_update", [1, 2])
def test_stochastic_rounding_update_bit_exact(nt, dtype, n_update):
    """triton_update == zo._update_kernel bit for bit with Rademacher z: the update arithmetic and
    the stochastic rounding bits (noise.bits_range's twin) agree exactly."""
    x = torch.randn(3000).to(dtype)
    ku = torch.stack([I32(noise.keys(5 + j, "w")) for j in range(n_update)])
    cu = [0.3, -0.2][:n_update]
    a, b = x.clone(), x.clone()
    zo._update_kernel(a, I32(777), ku, torch.tensor(cu), F32(1e-3), F32(0.1), I32(noise.keys(5, "w#sr")),
                      dist="rademacher", n_update=n_update, sr=dtype != torch.float32)
    nt.triton_update(b, 777, ku, cu, 1e-3, 0.1, noise.keys(5, "w#sr"), dist="rademacher", n_update=n_update,
                     sr=dtype != torch.float32)
    assert torch.equal(a, b) and not torch.equal(a, x)


def test_update_gaussian_close(nt):
    x = torch.randn(3000)
    a, b = x.clone(), x.clone()
    ku = I32(noise.keys(9, "w"))[None]
    zo._update_kernel(a, I32(5), ku, torch.tensor([2.0]), F32(1e-2), F32(0.0), I32(noise.keys(9, "w#sr")),
                      dist="gaussian", n_update=1, sr=False)
    nt.triton_update(b, 5, ku, [2.0], 1e-2, 0.0, noise.keys(9, "w#sr"), dist="gaussian", n_update=1, sr=False)
    torch.testing.assert_close(a, b, rtol=Z_RTOL, atol=Z_ATOL)  # z enters scaled by 2e-2


def test_stochastic_engine_drop_in(nt, monkeypatch):
    """Training steps of the stochastic numerics (dual forward + rounded update) on a bf16 model
    with the Triton kernels in place of the PyTorch ones give the same bits (Rademacher)."""
    results = []
    for pm, update in ((zo._pm_kernel, zo._update_kernel), (nt.triton_pm, nt.triton_update)):
        monkeypatch.setattr(zo, "_pm_kernel", pm)
        monkeypatch.setattr(zo, "_update_kernel", update)
        torch.manual_seed(0)
        m = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.LayerNorm(32), torch.nn.Linear(32, 4))
        m = m.to(torch.bfloat16)
        eng = zo.ZOEngine.from_model(m, dist="rademacher", backend="eager", numerics="stochastic")
        inp = torch.randn(8, 16, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)

        def pair():
            out = m(torch.cat([inp, inp])).float().pow(2)
            return out[:8].mean().item(), out[8:].mean().item()
        with torch.no_grad():
            for step in range(3):
                eng.step(None, [100 + 2 * step, 101 + 2 * step], 1e-2, 1e-3, 0.1, pair_fn=pair)
            eng.flush()
        results.append([p.detach().clone() for p in m.parameters()])
    for a, b in zip(*results):
        assert torch.equal(a, b)

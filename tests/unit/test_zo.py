"""The ZO engine: directions, fused schedule, exactness, finite differences."""
import math

import pytest
import torch

from mezo import noise, zo
from mezo.zo import ZOEngine, no_decay


def tiny_net(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.LayerNorm(32), torch.nn.Tanh(),
                               torch.nn.Linear(32, 3)).to(dtype)


X, Y = torch.randn(24, 16, generator=torch.Generator().manual_seed(1)), torch.arange(24) % 3


def flat(m):
    return torch.cat([p.detach().float().flatten() for p in m.parameters()])


def train(fused, backend="eager", dtype=torch.float32, master=False, n=1, steps=6, lr=1e-2, wd=0.1, dist="gaussian"):
    m = tiny_net(dtype)
    eng = ZOEngine.from_model(m, backend=backend, fused=fused, master_weights=master, dist=dist)
    lf = lambda: torch.nn.functional.cross_entropy(m(X.to(dtype)).float(), Y).item()  # noqa: E731
    gs = []
    with torch.no_grad():
        for t in range(steps):
            g, _ = eng.step(lf, [1000 + t * n + j for j in range(n)], lr, 1e-3, wd)
            gs += g
        eng.flush()
    return flat(m), gs


def test_directions_are_standard_normal_and_rademacher():
    z = noise.generate(7, "w", 0, 200_000).double()
    # standard errors for n = 200,000 normal draws: mean 1/sqrt(n) = 0.0022, std 1/sqrt(2n) = 0.0016;
    # 0.01 is 4.5 and 6 of them (a fixed seed: this is a check of the generator, not a coin toss)
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01
    r = noise.generate(7, "w", 0, 10_000, "rademacher")
    assert set(r.unique().tolist()) == {-1.0, 1.0}
    assert not torch.equal(noise.generate(7, "w", 0, 100), noise.generate(8, "w", 0, 100))
    assert not torch.equal(noise.generate(7, "w", 0, 100), noise.generate(7, "v", 0, 100))


def test_direction_slices_do_not_depend_on_sharding():
    full = noise.generate(3, "layer.weight", 0, 1000)
    parts = [noise.generate(3, "layer.weight", a, b - a) for a, b in [(0, 333), (333, 667), (667, 1000)]]
    assert torch.equal(torch.cat(parts), full)


@pytest.mark.parametrize("dtype,master,n", [(torch.float32, False, 1), (torch.float32, False, 3),
                                             (torch.bfloat16, False, 1), (torch.bfloat16, True, 2),
                                             (torch.float32, True, 1)])
def test_fused_schedule_equals_plain_four_sweeps(dtype, master, n):
    a, ga = train(True, dtype=dtype, master=master, n=n)
    b, gb = train(False, dtype=dtype, master=master, n=n)
    assert ga == gb
    assert torch.equal(a, b)
    assert not torch.equal(a, flat(tiny_net(dtype)))  # it did train


def test_fused_matches_a_hand_written_reference_step():
    """The plain algorithm written out with noise.generate, independent of the engine."""
    m = tiny_net()
    ref = {n: p.detach().clone() for n, p in m.named_parameters()}
    eps, lr, wd, seed = 1e-3, 0.05, 0.1, 99

    def lf_ref():
        return torch.nn.functional.cross_entropy(torch.func.functional_call(m, ref, (X,)), Y).item()

    def move(c):
        for n, p in ref.items():
            ref[n] = p + c * noise.generate(seed, n, 0, p.numel()).view_as(p)
    with torch.no_grad():
        move(eps); lp = lf_ref(); move(-2 * eps); lm = lf_ref(); move(eps)  # noqa: E702
        g = (lp - lm) / (2 * eps)
        for n, p in ref.items():
            z = noise.generate(seed, n, 0, p.numel()).view_as(p)
            ref[n] = p - lr * (g * z + (0.0 if no_decay(n) else wd) * p)
        eng = ZOEngine.from_model(m, backend="eager")
        (g2,), _ = eng.step(lambda: torch.nn.functional.cross_entropy(m(X), Y).item(), [seed], lr, eps, wd)
        eng.flush()
    assert g2 == g  # the same float operations in the same order: the same bits
    for n, p in m.named_parameters():
        assert torch.equal(p, ref[n]), n


def test_projected_gradient_matches_directional_derivative_fp64():
    m = tiny_net(torch.float64)
    x = X.double()
    loss = torch.nn.functional.cross_entropy(m(x), Y)
    grads = torch.autograd.grad(loss, list(m.parameters()))
    seed, eps = 5, 1e-5
    zs = [noise.generate(seed, n, 0, p.numel()).double().view_as(p) for n, p in m.named_parameters()]
    zg = sum((z * g).sum() for z, g in zip(zs, grads)).item()
    eng = ZOEngine.from_model(m, backend="eager")
    with torch.no_grad():
        (g_zo,), _ = eng.step(lambda: torch.nn.functional.cross_entropy(m(x), Y).item(), [seed], 0.0, eps, 0.0)
    # The engine's sweeps compute in fp32: theta - eps z is rounded to fp32 (error <= 2**-24 |theta -
    # eps z| per weight), which moves (L+ - L-) / (2 eps) by at most sum_i |g_i| 2**-24 |x_i| / (2 eps);
    # the central difference's truncation, O(eps^2) |D^3 L| ~ 1e-8 here, is far below that bound
    bound = sum((g.abs() * (p.detach().abs() + eps * z.abs())).sum()
                for g, p, z in zip(grads, m.parameters(), zs)).item() * 2 ** -24 * 1.01 / (2 * eps)
    assert abs(g_zo - zg) <= bound
    assert bound < 0.1 * abs(zg)  # a real, non-degenerate direction, resolved well within the bound


def test_restore_with_master_weights_is_bit_exact():
    m = tiny_net()
    before = flat(m)
    eng = ZOEngine.from_model(m, backend="eager", master_weights=True)
    eng.displace(11, 1e-3); eng.displace(11, -1e-3); eng.flush()  # noqa: E702
    assert torch.equal(flat(m), before)


def test_restore_in_place_fp32_is_within_rounding():
    """In-place fp32 (the reference's arithmetic) restores theta up to one rounding per sweep."""
    m = tiny_net()
    before = flat(m)
    eng = ZOEngine.from_model(m, backend="eager")
    eps = 1e-3
    eng.displace(11, eps)
    assert (flat(m) - before).abs().max() > 1e-5  # really perturbed
    eng.displace(11, -eps)
    eng.flush()
    assert eng.clean
    err = (flat(m) - before).abs()
    bound = 4 * torch.finfo(torch.float32).eps * (before.abs() + 3 * eps * 6)
    assert (err <= bound).all()


def test_lr_zero_no_update_and_weight_decay_skips_bias_and_norm():
    m = tiny_net()
    eng = ZOEngine.from_model(m, backend="eager", master_weights=True)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    with torch.no_grad():
        eng.step(lambda: 0.0, [1], 0.5, 1e-3, 0.1)  # g = 0: only weight decay acts
        eng.flush()
    for n, p in m.named_parameters():
        if no_decay(n):
            assert torch.equal(p, before[n]), n
        else:
            assert torch.equal(p, before[n] - 0.5 * (0.0 * before[n] + 0.1 * before[n])), n  # x - lr (g z + wd x)


def test_rademacher_training_runs():
    a, _ = train(True, dist="rademacher")
    b, _ = train(False, dist="rademacher")
    assert torch.equal(a, b)


def test_compiled_kernels_are_parallel_after_a_small_first_call(tmp_path, monkeypatch):
    """inductor decides whether a dynamic-shape CPU kernel gets a parallel loop from the size of
    its first call, and caches the result under a key that ignores that size: a 576-element first
    call (a norm weight, one embedding row) made every later kernel of the run, and of every
    later process, serial. The engine's kernels are compiled with a parallel loop whatever the
    first size; the same function compiled without the engine's options is serial (the cause)."""
    from torch._inductor.codecache import PyCodeCache
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))  # compiled here, not taken from a cache

    def kernel(x):
        x.mul_(2.0).add_(1.0)

    def same_kernel(x):  # its own code object: compiled afresh, not taken from kernel's entries
        x.mul_(2.0).add_(1.0)

    def generated(compiled) -> list[str]:
        before = len(PyCodeCache.modules)
        for n in (576, 1 << 16):
            compiled(torch.ones(n))
        sources = [open(m.__file__).read() for m in PyCodeCache.modules[before:]]
        return [src for src in sources if 'extern "C"' in src]  # the C++ kernels

    engine_way = generated(zo.compile_kernel(kernel))
    plain = generated(torch.compile(same_kernel, dynamic=True, fullgraph=True))
    assert engine_way and all("#pragma omp parallel" in src for src in engine_way)
    assert plain and not any("#pragma omp parallel" in src for src in plain)


def test_compiled_backend_matches_eager():
    """The default backend compiles the sweep into one generated kernel (C++ on CPU)."""
    pytest.importorskip("torch._inductor")
    a, ga = train(True, backend="compile", steps=3)
    b, gb = train(True, backend="eager", steps=3)
    # inductor evaluates Box-Muller's log / cos with its own vectorised functions (<= 1 ulp from
    # ATen's), so z may differ in the last bit; over 3 steps of lr 1e-2 that moves a weight by
    # far less than its own ulp, which rounding can turn into 1 ulp of |theta| <= 1.03 (1.2e-7;
    # measured max 6e-8): atol 1e-6 is 8 such ulps
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    c, _ = train(False, backend="compile", steps=3)
    assert torch.equal(a, c)  # fused == plain inside the compiled backend too
    assert math.isfinite(sum(ga))


# ---------------------------------------------------------------------------- numerics "stochastic"
class TiedNet(torch.nn.Module):
    """Embedding -> Linear -> LayerNorm -> tanh -> head tied to the embedding (as SmolLM2, OPT)."""

    def __init__(self, dtype=torch.float32, vocab=40):
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(vocab, 16)
        self.lin = torch.nn.Linear(16, 24)
        self.norm = torch.nn.LayerNorm(24)
        self.out = torch.nn.Linear(24, 16)
        self.head = torch.nn.Linear(16, vocab, bias=False)
        self.head.weight = self.emb.weight
        self.to(dtype)

    def forward(self, ids):
        return self.head(self.out(torch.tanh(self.norm(self.lin(self.emb(ids)))))).mean(1)


IDS, LABELS = torch.randint(0, 40, (12, 5), generator=torch.Generator().manual_seed(2)), torch.arange(12) % 40


def ce(logits):
    return torch.nn.functional.cross_entropy(logits.float(), LABELS).item()


def plain_reference(steps, n, eps, lr, wd, dist="gaussian", vocab=40):
    """The plain algorithm, independent of the engine: theta +/- eps z materialised out of place
    (noise.generate), two forwards each, then the update."""
    m = TiedNet(vocab=vocab)
    theta = {k: p.detach().clone() for k, p in m.named_parameters()}  # tied: "emb.weight" only
    gs, ls = [], []
    with torch.no_grad():
        for t in range(steps):
            seeds = [500 + t * n + j for j in range(n)]
            zs = [{k: noise.generate(s, k, 0, p.numel(), dist).view_as(p) for k, p in theta.items()} for s in seeds]
            g = []
            for z in zs:
                lp = ce(torch.func.functional_call(m, {k: p + eps * z[k] for k, p in theta.items()}, (IDS,)))
                lm = ce(torch.func.functional_call(m, {k: p - eps * z[k] for k, p in theta.items()}, (IDS,)))
                g.append((lp - lm) / (2 * eps))
                ls.append((lp, lm))
            gs += g
            for k, p in theta.items():
                s = (g[0] / n) * zs[0][k]
                for j in range(1, n):
                    s = s + (g[j] / n) * zs[j][k]
                theta[k] = p - lr * (s + (0.0 if no_decay(k) else wd) * p)
    return theta, gs, ls


def stochastic_run(steps, n, eps, lr, wd, dist="gaussian", dual=True, groups=1, dtype=torch.float32, vocab=40):
    m = TiedNet(dtype, vocab)
    eng = ZOEngine.from_model(m, backend="eager", numerics="stochastic", dist=dist, row_groups=groups)

    def pair():  # one forward of [rows; rows]: the first half scored with +eps, the second with -eps
        out = m(torch.cat([IDS, IDS]))
        return ce(out[:len(IDS)]), ce(out[len(IDS):])
    gs, ls = [], []
    with torch.no_grad():
        for t in range(steps):
            g, L = eng.step(lambda: ce(m(IDS)), [500 + t * n + j for j in range(n)], lr, eps, wd,
                            pair_fn=pair if dual else None)
            gs += g
            ls += L
        eng.flush()
    return m, eng, gs, ls


@pytest.mark.parametrize("n,dual,groups,dist", [(1, True, 1, "gaussian"), (1, True, 3, "gaussian"),
                                                (2, True, 2, "rademacher"), (1, False, 1, "gaussian")])
def test_stochastic_schedule_equals_plain_algorithm_fp32(n, dual, groups, dist):
    """The dual forward (+eps and -eps halves of one batch, z once per leaf, groups of rows) and
    the one-forward-per-sign variant give the plain algorithm's losses, g's and parameters, bit
    for bit: the same float operations per element (theta + eps*z in fp32, per-half GEMMs of the
    same shapes, the tied head and embedding sharing one z)."""
    theta, g_ref, l_ref = plain_reference(4, n, 1e-3, 0.05, 0.1, dist)
    m, eng, gs, ls = stochastic_run(4, n, 1e-3, 0.05, 0.1, dist, dual, groups)
    assert ls == l_ref and gs == g_ref
    for k, p in m.named_parameters():
        assert torch.equal(p, theta[k]), k
    assert m.head.weight is m.emb.weight and not torch.equal(theta["emb.weight"], TiedNet().emb.weight)


def test_dual_forward_z_evaluations_per_step():
    """Two z evaluations per element per step: one shared by +eps and -eps (plus the embedding's
    distinct looked-up rows, once more), one for the update; one forward per sign costs three."""
    m = TiedNet()
    numel = sum(p.numel() for p in m.parameters())
    rows = IDS.unique().numel() * m.emb.weight.shape[1]
    assert 0 < rows < (IDS.max() - IDS.min() + 1).item() * 16  # fewer than the span of rows
    _, eng, _, _ = stochastic_run(3, 1, 1e-3, 0.05, 0.0)
    assert eng.z_elements == 3 * (2 * numel + rows)
    _, eng, _, _ = stochastic_run(3, 1, 1e-3, 0.05, 0.0, dual=False)
    assert eng.z_elements == 3 * (3 * numel + 2 * rows)


@pytest.mark.parametrize("dist", ["gaussian", "rademacher"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_embedding_rows_kernel_equals_the_flat_kernel_per_row(dist, dtype):
    """pm_rows (an embedding's looked-up rows in one call) gives, row for row, the bits of the
    flat kernel over that row's slice of the table (z from the same global indices), in eager and
    in the compiled backend (both compile the same IEEE-exact operations, no FMA)."""
    table = torch.randn(50, 24).to(dtype)
    rows = torch.tensor([0, 7, 8, 9, 31, 49])
    k = torch.tensor(noise.keys(3, "emb.weight"), dtype=torch.int32)
    eps = torch.tensor(1e-2)
    want = [zo._pm_kernel(table[r], torch.tensor(int(r) * 24, dtype=torch.int32), k, eps, dist=dist, both=True)
            for r in rows]
    for backend in ("eager", "compile"):
        plus, minus = zo.kernels(backend).pm_rows(table, rows, k, eps, dist=dist, both=True)
        assert plus.shape == minus.shape == (6, 24) and plus.dtype == dtype
        assert torch.equal(plus, torch.stack([w[0] for w in want])), backend
        assert torch.equal(minus, torch.stack([w[1] for w in want])), backend
        one, none = zo.kernels(backend).pm_rows(table, rows, k, -eps, dist=dist, both=False)
        assert none is None and torch.equal(one, minus)


def test_chunked_linear_equals_plain(monkeypatch):
    """A Linear bigger than CHUNK is perturbed and multiplied in row chunks of its weight (256
    rows or a multiple): each output feature is the dot product of its own weight row, which BLAS
    sums over K the same way for any number of rows from 256 on (measured on x86_64 with MKL for
    the SmolLM2 / OPT head shapes; with 6-row chunks it does not), so the chunks give the
    unchunked bits."""
    theta, g_ref, l_ref = plain_reference(2, 1, 1e-3, 0.05, 0.1, vocab=1024)
    monkeypatch.setattr(zo, "CHUNK", 4096)  # the 1024 x 16 head is chunked ...
    monkeypatch.setattr(zo, "LINEAR_CHUNK", 4096)  # ... in 4 chunks of 256 rows
    sizes, pm = [], zo.Perturbation.pm
    monkeypatch.setattr(zo.Perturbation, "pm", lambda self, name, t, lo, hi: sizes.append(hi - lo) or pm(self, name, t, lo, hi))
    m, _, gs, ls = stochastic_run(2, 1, 1e-3, 0.05, 0.1, vocab=1024)
    assert sizes.count(256 * 16) == 2 * 4  # two steps, four chunks each
    assert ls == l_ref and gs == g_ref
    assert torch.equal(m.emb.weight, theta["emb.weight"])


def test_stochastic_lr_zero_keeps_bf16_weights_bit_identical_for_10000_steps():
    """theta is never perturbed in place, and an update with lr 0 rounds back to itself: 10,000
    bf16 steps (real dual forwards, weight decay on) leave every bit as it was. The in-place
    reference numerics drift here (+eps, -2eps, +eps does not round back in bf16)."""
    def model():  # cheap leaves (bf16 GEMMs and norms of tiny shapes cost milliseconds on CPU)
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Embedding(8, 4), torch.nn.PReLU()).to(torch.bfloat16)
    x = torch.randint(0, 8, (6, 3), generator=torch.Generator().manual_seed(0))
    m = model()
    before = [p.detach().clone() for p in m.parameters()]
    eng = ZOEngine.from_model(m, backend="eager", numerics="stochastic")

    def pair():
        out = m(torch.cat([x, x])).float().pow(2).mean((1, 2))
        return out[:6].sum().item(), out[6:].sum().item()
    gs = []
    with torch.no_grad():
        for t in range(10_000):
            gs += eng.step(None, [t], 0.0, 1e-2, 0.1, pair_fn=pair)[0]
        eng.flush()
    assert all(torch.equal(a, b) for a, b in zip(before, m.parameters()))
    assert sum(g != 0.0 for g in gs) > 9000  # real directions, real loss differences
    ref = model()
    eng = ZOEngine.from_model(ref, backend="eager", numerics="reference")
    with torch.no_grad():
        eng.step(lambda: ref(x).float().pow(2).sum().item(), [0], 0.0, 1e-2, 0.1)
        eng.flush()
    assert not all(torch.equal(a, b) for a, b in zip(before, ref.parameters()))


def test_stochastic_rounding_keeps_small_updates():
    """bf16 weights, updates 10x below half an ulp: round to nearest never moves a weight, while
    stochastic rounding moves them as fp32 does in expectation. The update here is weight decay
    (deterministic: theta_T = theta_0 (1 - lr wd)^T) plus a random direction that the fp32 and
    bf16 runs share; measured by the least-squares shrink factor c = <theta_T, theta_0> / |theta_0|^2."""
    torch.manual_seed(0)
    w0 = (torch.rand(4096) + 0.5).to(torch.bfloat16)  # |w| in [0.5, 1.5]: bf16 ulp 2^-8 .. 2^-7
    runs = {}
    for name, dtype, numerics in (("fp32", torch.float32, "stochastic"), ("sr", torch.bfloat16, "stochastic"),
                                  ("rn", torch.bfloat16, "reference")):
        m = torch.nn.Linear(4096, 1, bias=False)
        with torch.no_grad():
            m.weight.copy_(w0.float()[None])
        m.to(dtype)
        eng = ZOEngine.from_model(m, backend="eager", numerics=numerics, decay=lambda n: True)
        for t in range(500):
            # lr * wd = 2e-4 of |w| (<= 1/19 of an ulp), lr * g * |z| ~ 1e-5: RN never moves
            eng.schedule_coefficients([t], [1.0], 1e-5, 20.0)
            eng.flush()
        runs[name] = m.weight.detach().float().flatten()
    x0 = w0.float()
    c = {k: float((v * x0).sum() / (x0 * x0).sum()) for k, v in runs.items()}
    assert torch.equal(runs["rn"], x0)  # round to nearest: no weight ever moves
    assert abs(c["fp32"] - 0.9998 ** 500) < 1e-3  # 0.905: the decay (the shared direction averages out)
    # each stochastic rounding adds zero-mean noise of variance <= ulp^2 / 4; over 500 steps and
    # 4096 weights that moves c by a standard deviation <= sqrt(500) / 2 * 2^-7 / sqrt(4096) = 0.0014
    assert abs(c["sr"] - c["fp32"]) < 0.01
    assert (runs["sr"] != x0).float().mean() > 0.9  # the bf16 weights really moved


def test_stochastic_round_is_unbiased_and_exact_on_representable_values():
    v = torch.full((100_000,), 1.0 + 2 ** -10)  # 1/8 of the way from 1 to the next bf16 (1 + 2^-7)
    bits = noise.bits_range(torch.tensor(0, dtype=torch.int32), v.numel(), torch.tensor(noise.keys(1, "x#sr"),
                                                                                          dtype=torch.int32))
    r = zo.stochastic_round(v, bits, torch.bfloat16).float()
    assert set(r.unique().tolist()) == {1.0, 1.0 + 2 ** -7}
    # P(up) = 1/8: the mean of 100,000 draws has standard deviation sqrt(p (1 - p) / n) = 0.001 (x 2^-7)
    assert abs((r.mean().item() - 1.0) / 2 ** -7 - 0.125) < 0.005
    w = torch.randn(1000).to(torch.bfloat16)
    assert torch.equal(zo.stochastic_round(w.float(), bits[:1000], torch.bfloat16), w)
    neg = zo.stochastic_round(-v, bits, torch.bfloat16).float()
    assert torch.equal(neg, -r)  # the magnitude is rounded: symmetric in sign
    h = zo.stochastic_round(torch.tensor([1.0 + 2 ** -13, float("inf"), float("nan")]), bits[:3], torch.float16)
    assert h[0].item() in (1.0, 1.0 + 2 ** -10) and h[1].item() == float("inf") and h[2].isnan()


def test_stochastic_needs_every_parameter_inside_a_splittable_module():
    class Direct(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 4)
            self.scale = torch.nn.Parameter(torch.ones(4))  # used by the parent itself

        def forward(self, x):
            return self.lin(x) * self.scale
    with pytest.raises(ValueError, match="scale is not owned by such a module"):
        ZOEngine.from_model(Direct(), backend="eager", numerics="stochastic")
    ZOEngine.from_model(Direct(), backend="eager", numerics="master")  # the fallback works


def test_parity_self_check_falls_back(caplog):
    """The self-check compares a backend's kernels with the eager PyTorch path on a small tensor:
    here the real compiled (C++) kernel against eager on CPU. With the default comparison
    (Gaussian z within 1e-6) it passes; a comparison that rejects every output fails it (whether
    inductor's code matches ATen's to the last bit depends on the CPU, so a bit-exact comparison
    would pass on some machines and fail on others), and the engine falls back to eager with one
    warning line."""
    pytest.importorskip("torch._inductor")
    cpu = torch.device("cpu")
    assert zo.select_backend("compile", cpu, "gaussian", "stochastic") == ("compile", [])
    reject = lambda dist, got, want: False  # noqa: E731  (rejects every output)
    with caplog.at_level("WARNING", logger="mezo"):
        chosen, failures = zo.select_backend("compile", cpu, "gaussian", "stochastic", compare=reject)
    assert chosen == "eager" and len(failures) == 1 and failures[0].startswith("compile: theta + eps z differs")
    assert [r.getMessage() for r in caplog.records if r.name == "mezo"] == [
        f"MeZO kernel backend compile failed its parity self-check ({failures[0][9:]}): using eager"]
    eng = ZOEngine.from_model(tiny_net(), backend="compile", numerics="stochastic")
    assert eng.check_backend(compare=reject) == failures and eng.backend == "eager"


def test_parity_self_check_catches_a_kernel_that_cannot_run(monkeypatch):
    """Triton kernels launched on CPU tensors (no GPU, no interpreter) fail: the check reports the
    error, and select_backend moves on to the next backend."""
    pytest.importorskip("triton")
    import importlib

    import mezo.noise_triton
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # tests/unit/test_noise_triton.py sets it
    importlib.reload(mezo.noise_triton)  # kernels built for a GPU (jit reads the variable when defined)
    why = zo.parity_check("triton", torch.device("cpu"), "rademacher", "reference")
    assert why is not None and "Error" in why.split(":")[0]

"""The hand-written CPU kernels (mezo/native.py, mezo/native_kernels.c) against the eager PyTorch
path: bit for bit, since both compute the same IEEE operations in the same order (float32
multiplies and adds rounded separately, one correctly rounded square root, bf16 rounded to
nearest even or stochastically with the same bits)."""
import os

import pytest
import torch

from mezo import native, noise, zo

pytestmark = pytest.mark.skipif(not native.available(), reason="no C compiler")

CPU = torch.device("cpu")
# sizes: below and above the kernels' PAR_MIN (65536, where the thread pool takes over), not a
# multiple of any vector width
SIZES = [1, 577, 70001]
# global index of element 0: 0, odd, and the last indices int32 holds
STARTS = [0, 12345, noise.MAX_NUMEL - 70001]


def key(seed, name="w"):
    return torch.tensor(noise.keys(seed, name), dtype=torch.int32)


def i32(v):
    return torch.tensor(v, dtype=torch.int32)


DTYPES = [torch.float32, torch.bfloat16]


@pytest.mark.parametrize("dist", ["gaussian", "rademacher"])
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", DTYPES)
def test_pm_equals_eager(dist, n, threads, dtype):
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        theta = torch.randn(n, generator=torch.Generator().manual_seed(n)).to(dtype)
        for start in STARTS:
            for eps in (1e-3, -0.5):
                want = zo._pm_kernel(theta, i32(start), key(start), torch.tensor(eps), dist=dist, both=True)
                plus, minus = native.pm(theta, i32(start), key(start), torch.tensor(eps), dist=dist, both=True)
                assert torch.equal(plus, want[0]) and torch.equal(minus, want[1]), (start, eps)
                one, none = native.pm(theta, i32(start), key(start), torch.tensor(eps), dist=dist, both=False)
                assert none is None and torch.equal(one, want[0])
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("dist", ["gaussian", "rademacher"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_pm_rows_equals_eager(dist, dtype):
    for d in (24, 70001):  # a row below and above PAR_MIN
        table = torch.randn(40, d, generator=torch.Generator().manual_seed(d)).to(dtype)
        rows = torch.tensor([0, 3, 4, 17, 39])
        want = zo._pm_rows_kernel(table, rows, key(5), torch.tensor(1e-2), dist=dist, both=True)
        got = native.pm_rows(table, rows, key(5), torch.tensor(1e-2), dist=dist, both=True)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        one, none = native.pm_rows(table, rows, key(5), torch.tensor(-1e-2), dist=dist, both=False)
        assert none is None and torch.equal(one, want[1])


def test_pm_rows_out_of_range_is_an_error():
    with pytest.raises(IndexError, match="out of range"):
        native.pm_rows(torch.zeros(4, 3), torch.tensor([1, 4]), key(1), torch.tensor(1.0), dist="gaussian", both=True)


@pytest.mark.parametrize("dist", ["gaussian", "rademacher"])
@pytest.mark.parametrize("n_update", [1, 3])
@pytest.mark.parametrize("wd", [0.0, 0.1])
@pytest.mark.parametrize("dtype,sr", [(torch.float32, False), (torch.bfloat16, False), (torch.bfloat16, True)])
def test_update_equals_eager(dist, n_update, wd, dtype, sr):
    """The update, with bf16 rounded to nearest and stochastically; lr 1e-3 moves some bf16
    weights by less than half a unit in the last place, so the two roundings differ there."""
    for n in SIZES:
        x = torch.randn(n, generator=torch.Generator().manual_seed(7)).to(dtype)
        ku = torch.stack([key(s) for s in range(n_update)])
        cu = torch.tensor([0.5, -0.25, 2.0][:n_update])
        for start in STARTS:
            want, got = x.clone(), x.clone()
            args = (i32(start), ku, cu, torch.tensor(1e-3), torch.tensor(wd), key(9))
            zo._update_kernel(want, *args, dist=dist, n_update=n_update, sr=sr)
            v0 = got._version
            native.update(got, *args, dist=dist, n_update=n_update, sr=sr)
            assert torch.equal(got, want), (n, start)
            assert got._version > v0  # an in-place write, as autograd sees it


def test_bf16_rounding_of_special_values_equals_eager():
    """bf16 rounding, native against eager, on values chosen for its edge cases: ties (1 + 3 * 2**-8
    lies halfway between two bf16 values), NaN, infinities, the largest finite bf16 pushed past it,
    subnormals; the update's stochastic rounding of the same (non-finite values cast as they are).
    Compared as bit patterns (NaN != NaN)."""
    inf, nan = float("inf"), float("nan")
    theta = torch.tensor([0.0, -0.0, 1.0, -1.0, 3.0, inf, -inf, nan, 3.3895e38, -3.3895e38, 1e-39, -1e-39])
    theta = theta.to(torch.bfloat16)

    def same(a, b):
        """The same bits, except that a NaN may have any pattern: PyTorch's own cast gives 0x7FC0
        (c10::BFloat16) or 0xFFFF (its AVX-512 path) depending on the code path."""
        nan_a, nan_b = a.isnan(), b.isnan()
        return torch.equal(nan_a, nan_b) and torch.equal(a.view(torch.int16)[~nan_a], b.view(torch.int16)[~nan_b])

    for dist in ("gaussian", "rademacher"):
        for eps in (2 ** -8, 3 * 2 ** -8, 1e37, 1e-39, 0.0):
            want = zo._pm_kernel(theta, i32(0), key(1), torch.tensor(eps), dist=dist, both=True)
            got = native.pm(theta, i32(0), key(1), torch.tensor(eps), dist=dist, both=True)
            assert same(got[0], want[0]) and same(got[1], want[1]), (dist, eps)
        for sr in (False, True):
            for lr in (1e-3, 1e37):
                want, got = theta.clone(), theta.clone()
                args = (i32(0), key(1)[None], torch.tensor([1.0]), torch.tensor(lr), torch.tensor(0.1), key(2))
                zo._update_kernel(want, *args, dist=dist, n_update=1, sr=sr)
                native.update(got, *args, dist=dist, n_update=1, sr=sr)
                assert same(got, want), (dist, sr, lr)


def test_native_backend_sends_other_calls_to_the_compiled_kernels():
    """fp16 weights (and their stochastic rounding) and the legacy generator are not in C: the
    native backend's kernels give the compiled (= eager) bits for them."""
    k = zo.kernels("native")
    theta = torch.randn(3000).to(torch.float16)
    want = zo._pm_kernel(theta, i32(77), key(1), torch.tensor(1e-2), dist="gaussian", both=True)
    got = k.pm(theta, i32(77), key(1), torch.tensor(1e-2), dist="gaussian", both=True)
    assert not native.handles(theta, noise.DEFAULT_GENERATOR)
    assert got[0].dtype == torch.float16 and torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    x, y = theta.clone(), theta.clone()
    args = (i32(77), key(1)[None], torch.tensor([0.5]), torch.tensor(1e-2), torch.tensor(0.0), key(2))
    zo._update_kernel(x, *args, dist="rademacher", n_update=1, sr=True)
    k.update(y, *args, dist="rademacher", n_update=1, sr=True)
    assert torch.equal(x, y)
    t32 = torch.randn(3000)
    assert not native.handles(t32, noise.LEGACY_GENERATOR) and native.handles(t32, noise.DEFAULT_GENERATOR)
    assert not native.handles(t32[::2], noise.DEFAULT_GENERATOR)  # not contiguous


def test_native_is_the_auto_choice_on_cpu_when_a_compiler_is_there(monkeypatch):
    monkeypatch.setattr(native.platform, "system", lambda: "Linux")
    monkeypatch.setattr(native, "compiler", lambda: "/usr/bin/some-cc")
    assert zo.resolve_backend("auto", CPU) == "native"
    monkeypatch.setattr(native, "compiler", lambda: None)
    assert zo.resolve_backend("auto", CPU) == "compile"  # no C compiler: the generated kernels


def test_native_is_chosen_by_name_and_its_parity_check_passes():
    assert zo.resolve_backend("native", CPU) == "native"
    with pytest.raises(ValueError, match="CPU only"):
        zo.resolve_backend("native", torch.device("cuda"))
    for dist in ("gaussian", "rademacher"):
        assert zo.select_backend("native", CPU, dist, "stochastic") == ("native", [])


def test_a_failed_build_falls_back_to_compile_with_the_reason(monkeypatch, tmp_path):
    monkeypatch.setenv("MEZO_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "false")  # a "compiler" that fails
    native.library.cache_clear()
    try:
        backend, failures = zo.select_backend("native", CPU, "rademacher", "stochastic")
    finally:
        native.library.cache_clear()
    assert backend == "compile"
    assert len(failures) == 1 and failures[0].startswith("native: RuntimeError: false failed to build")


def test_the_build_is_cached_by_source_compiler_and_cpu(monkeypatch, tmp_path):
    monkeypatch.setenv("MEZO_CACHE", str(tmp_path))
    native.library.cache_clear()
    try:
        native.library()
        built = os.listdir(tmp_path / "native")
        assert len(built) == 1 and built[0].startswith("mezo_kernels-") and built[0].endswith(".so")
        mtime = os.stat(tmp_path / "native" / built[0]).st_mtime_ns
        native.library.cache_clear()
        native.library()  # a new process: found, not rebuilt
        assert os.listdir(tmp_path / "native") == built
        assert os.stat(tmp_path / "native" / built[0]).st_mtime_ns == mtime
    finally:
        native.library.cache_clear()


def test_with_caching_off_nothing_stays(monkeypatch, tmp_path):
    monkeypatch.setenv("MEZO_CACHE", "off")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again
    native.library.cache_clear()
    try:
        lib = native.library()
        theta = torch.randn(100)
        got = native.pm(theta, i32(3), key(1), torch.tensor(0.5), dist="rademacher", both=False)[0]
        want = zo._pm_kernel(theta, i32(3), key(1), torch.tensor(0.5), dist="rademacher", both=False)[0]
        assert lib is not None and torch.equal(got, want)
        assert os.listdir(tmp_path) == []
    finally:
        native.library.cache_clear()


def test_the_native_engine_is_self_checked_on_cpu_and_the_compiled_one_is_not():
    """The C kernels are built for the CPU they run on, so the trainer checks them before a run;
    the compiled CPU kernels are what this project's tests run."""
    from mezo.zo import ZOEngine
    for backend, checked in (("native", True), ("compile", False)):
        eng = ZOEngine.from_model(torch.nn.Linear(4, 3), backend=backend, numerics="stochastic")
        assert eng.needs_check is checked and eng.check_backend() == []
        assert eng.backend == backend

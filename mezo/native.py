"""Hand-written CPU kernels for the stochastic numerics (float32 and bfloat16, generator lowbias32-poly-v2).

mezo/native_kernels.c is compiled with the system C compiler the first time a process needs it
(about a second) and kept under the mezo cache folder (mezo.cache), keyed by the source, the
compiler and this CPU (it is built with -march=native); it is loaded with ctypes. The kernels give
the bits of the eager PyTorch path (mezo/zo.py's _pm_kernel, _pm_rows_kernel, _update_kernel) at
about 0.7x the time of the torch.compile'd ones (BENCHMARKS.md section 9.5).

`handles` says which calls they serve: float32 and bfloat16 CPU tensors with the default
generator. mezo.zo sends every other call (fp16 weights, lowbias32-v1, the sweep numerics) to the
compiled kernels.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile

import torch

from mezo import cache, noise

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "native_kernels.c")
# no -ffast-math and no contraction into FMAs: every multiply and add is rounded as in PyTorch;
# -fno-math-errno lets sqrtf be the (correctly rounded) vector square root
FLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno", "-fopenmp", "-shared", "-fPIC"]
GENERATOR = "lowbias32-poly-v2"
_DIST = {"gaussian": 0, "rademacher": 1}
_DTYPE = {torch.float32: 0, torch.bfloat16: 1}
_i64, _i32, _f32, _p = ctypes.c_int64, ctypes.c_int32, ctypes.c_float, ctypes.c_void_p
_SIGNATURES = {
    "mezo_pm": [_p, _p, _p, _i64, _i32, _i32, _i32, _f32, ctypes.c_int, ctypes.c_int, ctypes.c_int],
    "mezo_pm_rows": [_p, _p, _i64, _i64, _p, _p, _i32, _i32, _f32, ctypes.c_int, ctypes.c_int, ctypes.c_int],
    "mezo_update": [_p, _i64, _i32, _p, _p, ctypes.c_int, _f32, _f32, _p, ctypes.c_int, ctypes.c_int,
                    ctypes.c_int],
}


def compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")


def available() -> bool:
    """A C compiler is there (whether it builds and agrees is the parity self-check's question)."""
    return platform.system() == "Linux" and compiler() is not None


def _cpu_identity() -> str:
    """What -march=native depends on: the CPU's model and feature flags."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f.read().splitlines() if ln.startswith(("model name", "flags"))]
        return "|".join(lines[:2])
    except OSError:
        return platform.processor()


@functools.lru_cache(maxsize=1)
def library() -> ctypes.CDLL:
    """The compiled kernels (built on first use; RuntimeError with the compiler's message if the
    build fails)."""
    cc = compiler()
    if cc is None:
        raise RuntimeError("no C compiler (set CC, or install gcc)")
    argv = shlex.split(cc)  # CC may carry flags of its own
    with open(SOURCE, "rb") as f:
        src = f.read()
    version = subprocess.run([*argv, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256(b"|".join([src, cc.encode(), version.encode(), " ".join(FLAGS).encode(),
                                    _cpu_identity().encode()])).hexdigest()[:24]
    root = cache.root()
    folder = os.path.join(root, "native") if root else tempfile.mkdtemp(prefix="mezo-native-")
    path = os.path.join(folder, f"mezo_kernels-{key}.so")
    try:
        if not os.path.exists(path):
            os.makedirs(folder, exist_ok=True)
            tmp = f"{path}.{os.getpid()}.tmp"  # ranks building at once each write their own file
            done = subprocess.run([*argv, *FLAGS, SOURCE, "-o", tmp], capture_output=True, text=True)
            if done.returncode != 0:
                if os.path.exists(tmp):
                    os.remove(tmp)
                raise RuntimeError(f"{cc} failed to build {SOURCE}: {' '.join(done.stderr.split())[:300]}")
            os.replace(tmp, path)
        lib = ctypes.CDLL(path)
    finally:
        if not root:  # caching off: nothing stays (a loaded library outlives its file)
            shutil.rmtree(folder, ignore_errors=True)
    for name, args in _SIGNATURES.items():
        getattr(lib, name).argtypes = args
        getattr(lib, name).restype = None
    return lib


def handles(t: torch.Tensor, generator: str) -> bool:
    return (generator == GENERATOR and t.dtype in _DTYPE and t.device.type == "cpu"
            and t.is_contiguous() and t.numel() <= noise.MAX_NUMEL)


def _keys(k: torch.Tensor) -> tuple[int, int]:
    k0, k1 = k.tolist()[:2]
    return k0, k1


def pm(theta, idx0, k, eps, *, dist, both: bool):
    """mezo.zo._pm_kernel for a CPU slice that `handles`."""
    plus = torch.empty_like(theta)
    minus = torch.empty_like(theta) if both else None
    library().mezo_pm(theta.data_ptr(), plus.data_ptr(), minus.data_ptr() if both else None, theta.numel(),
                      int(idx0), *_keys(k), float(eps), _DTYPE[theta.dtype], _DIST[dist], torch.get_num_threads())
    return plus, minus


def pm_rows(table, rows, k, eps, *, dist, both: bool):
    """mezo.zo._pm_rows_kernel for a CPU table that `handles`."""
    rows = rows.to(torch.int64).contiguous()
    if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= table.shape[0]):
        raise IndexError(f"rows out of range for a table of {table.shape[0]} rows")
    shape = (rows.numel(), table.shape[1])
    plus = torch.empty(shape, dtype=table.dtype)
    minus = torch.empty(shape, dtype=table.dtype) if both else None
    library().mezo_pm_rows(table.data_ptr(), rows.data_ptr(), shape[0], shape[1], plus.data_ptr(),
                           minus.data_ptr() if both else None, *_keys(k), float(eps), _DTYPE[table.dtype],
                           _DIST[dist], torch.get_num_threads())
    return plus, minus


def update(x, idx0, ku, cu, lr, wd, ksr, *, dist, n_update: int, sr: bool):
    """mezo.zo._update_kernel for a CPU slice that `handles`, in place (sr: bf16 rounded
    stochastically with bits under the keys ksr, else to nearest; float32: never sr)."""
    ku = ku.to(torch.int32).contiguous()
    cu = cu.to(torch.float32).contiguous()
    assert not (sr and x.dtype == torch.float32), "float32 updates are not rounded"
    ksr = ksr.to(torch.int32).contiguous() if sr else None
    library().mezo_update(x.data_ptr(), x.numel(), int(idx0), ku.data_ptr(), cu.data_ptr(), n_update,
                          float(lr), float(wd), ksr.data_ptr() if sr else None, _DTYPE[x.dtype], _DIST[dist],
                          torch.get_num_threads())
    torch.autograd.graph.increment_version(x)  # written in place, as x.copy_ would say

"""experiment_config.json names the process's C allocator (mezo.context.allocator): a preloaded
one is recognised by its library in the process's mappings; setup_reproduction.sh's run (and
`python` job) preloads a jemalloc the system has."""
import hashlib
import os
import platform
import shlex
import subprocess
import sys

import pytest

from helpers import ROOT
from mezo import native

ASK = "from mezo import context; print(context.allocator())"
NEEDS_PRELOAD = pytest.mark.skipif(platform.system() != "Linux" or native.compiler() is None,
                                   reason="needs Linux (LD_PRELOAD, /proc) and a C compiler for stand-in libraries")


def _allocator(env_extra: dict) -> str:
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    env.update(env_extra)
    done = subprocess.run([sys.executable, "-c", ASK], cwd=ROOT, env=env, capture_output=True, text=True,
                          check=True)
    return done.stdout.strip()


def _stand_in(path) -> str:
    src = path.parent / "empty.c"
    src.write_text("int mezo_stand_in;\n")
    subprocess.run([*shlex.split(native.compiler()), "-shared", "-fPIC", str(src), "-o", str(path)], check=True)
    return str(path)


@NEEDS_PRELOAD
def test_a_preloaded_jemalloc_is_named_and_glibc_is_system(tmp_path):
    # a library named as jemalloc's (empty: malloc stays glibc's); what is checked is that its
    # mapping is found, which is all allocator() looks at
    lib = _stand_in(tmp_path / "libjemalloc.so.2")
    assert _allocator({}) == "system"
    assert _allocator({"LD_PRELOAD": lib}) == "jemalloc"


def _setup_env() -> dict | None:
    """The variables under which setup_reproduction.sh finds this environment set up (its stamp:
    lock and pyproject hash, DEPS, torch, TORCH_INDEX), so that its `python` job installs nothing;
    None where this environment was not made by it or the lock has changed since."""
    try:
        with open(os.path.join(sys.prefix, ".mezo-setup")) as f:
            digest, deps, torch_req, index = f.read().strip().split("-", 3)
    except (OSError, ValueError):
        return None
    with open(os.path.join(ROOT, "requirements-lock.txt"), "rb") as a, \
            open(os.path.join(ROOT, "pyproject.toml"), "rb") as b:
        if hashlib.sha256(a.read() + b.read()).hexdigest() != digest:
            return None
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF", "MEZO_ALLOCATOR")}
    env.update(VENV=sys.prefix, DEPS=deps, TORCH_VERSION=torch_req.removeprefix("torch=="))
    if index:
        env["TORCH_INDEX"] = index
    else:
        env.pop("TORCH_INDEX", None)
    return env


@NEEDS_PRELOAD
def test_the_run_preloads_the_systems_jemalloc_unless_told_otherwise(tmp_path):
    # setup_reproduction.sh's `python` job (the run's environment and allocator, for the benches)
    # with a system whose ldconfig lists a jemalloc: it is preloaded with decay off; an LD_PRELOAD
    # already set is kept; MEZO_ALLOCATOR=system keeps glibc's malloc
    env = _setup_env()
    if env is None:
        pytest.skip("this Python environment is not one setup_reproduction.sh made from the current lock")
    je = _stand_in(tmp_path / "libjemalloc.so.2")
    other = _stand_in(tmp_path / "libtcmalloc.so.4")
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "ldconfig").write_text(f"#!/bin/sh\necho '\tlibjemalloc.so.2 (libc6,x86-64) => {je}'\n")
    (fake / "ldconfig").chmod(0o755)
    env["PATH"] = f"{fake}:{env['PATH']}"
    ask = "import os; from mezo import context; print(context.allocator(), os.environ.get('MALLOC_CONF'))"

    def job(**extra) -> str:
        done = subprocess.run(["bash", os.path.join(ROOT, "setup_reproduction.sh"), "python", "-c", ask], cwd=ROOT,
                              env={**env, **extra}, capture_output=True, text=True, check=True)
        return done.stdout.strip().splitlines()[-1]

    assert job() == "jemalloc dirty_decay_ms:-1,muzzy_decay_ms:-1"
    assert job(LD_PRELOAD=other) == "tcmalloc None"
    assert job(MEZO_ALLOCATOR="system") == "system None"

"""experiment_config.json names the process's C allocator (mezo.context.allocator): a preloaded
one is recognised by its library in the process's mappings."""
import os
import platform
import shlex
import subprocess
import sys

import pytest

from helpers import ROOT
from mezo import native

ASK = "from mezo import context; print(context.allocator())"


def _allocator(env_extra: dict) -> str:
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    env.update(env_extra)
    done = subprocess.run([sys.executable, "-c", ASK], cwd=ROOT, env=env, capture_output=True, text=True,
                          check=True)
    return done.stdout.strip()


@pytest.mark.skipif(platform.system() != "Linux" or native.compiler() is None,
                    reason="needs Linux (LD_PRELOAD, /proc) and a C compiler for the stand-in library")
def test_a_preloaded_jemalloc_is_named_and_glibc_is_system(tmp_path):
    # a library named as jemalloc's (empty: malloc stays glibc's); what is checked is that its
    # mapping is found, which is all allocator() looks at
    lib = tmp_path / "libjemalloc.so.2"
    src = tmp_path / "empty.c"
    src.write_text("int mezo_stand_in;\n")
    subprocess.run([*shlex.split(native.compiler()), "-shared", "-fPIC", str(src), "-o", str(lib)], check=True)
    assert _allocator({}) == "system"
    assert _allocator({"LD_PRELOAD": str(lib)}) == "jemalloc"

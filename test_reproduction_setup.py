#!/usr/bin/env python
"""Check that this machine can run the reproduction: one PASS / FAIL / SKIP line per check.

    python test_reproduction_setup.py                         # offline defaults: bundled SST-2 sample, SmolLM2
    python test_reproduction_setup.py --model_name facebook/opt-13b --data_dir ../shared/data --task_name SST2
    python test_reproduction_setup.py --skip_model

Exits 1 if any check fails.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from mezo.experiments import envcheck


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", default="mezo/data/sst2_sample", help="'' to check hub access instead")
    p.add_argument("--task_name", default="SST2")
    p.add_argument("--model_name", default=None, help="default: the bundled offline SmolLM2 GGUF")
    p.add_argument("--gguf_file", default=None)
    p.add_argument("--skip_model", action="store_true")
    p.add_argument("--skip_distributed", action="store_true", help="skip the 2-process gloo all-reduce")
    a = p.parse_args(argv)
    os.chdir(os.path.dirname(os.path.abspath(__file__)))

    checks = [("versions", envcheck.versions), ("cuda", envcheck.cuda), ("fsdp2", envcheck.fsdp2),
              ("gloo all-reduce", None if a.skip_distributed else envcheck.gloo_allreduce),
              ("dataset", lambda: envcheck.dataset(a.data_dir or None, a.task_name)),
              ("model", None if a.skip_model else lambda: envcheck.model(a.model_name, a.gguf_file)),
              ("mezo step", envcheck.mezo_step_exactness)]
    failed = 0
    for name, fn in checks:
        t0 = time.time()
        status, detail = ("SKIP", "skipped by flag") if fn is None else fn()
        failed += status == "FAIL"
        print(f"{status:<4}  {name:<16} {detail}  [{time.time() - t0:.1f}s]", flush=True)
    print(f"{'FAIL' if failed else 'PASS'}: {failed} check(s) failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

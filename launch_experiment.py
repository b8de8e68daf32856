#!/usr/bin/env python
"""Launch a preset experiment from configs/.

    python launch_experiment.py --list
    python launch_experiment.py --config quick_test
    python launch_experiment.py --config opt13b_sst2_mezo_lora --override learning_rate=1e-4 --nproc 4 --dry_run

A preset for accelerate_mezo.py runs as `accelerate_mezo.py --config configs/<name>.yaml` followed
by `--flag value` for each --override (the entry point reads the preset; later flags win). A
preset for a driver script (the grid runner) gets its args as flags.
"""
from __future__ import annotations

import argparse
import subprocess
import sys

from mezo.experiments import presets
from mezo.experiments.command import to_string


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="preset name (a file configs/<name>.yaml) or a preset file")
    p.add_argument("--list", action="store_true", help="list presets with their descriptions")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="a flag for the script after the preset's (repeatable); KEY is a flag, or nproc")
    p.add_argument("--nproc", type=int, default=None, help="processes per node: torchrun --nproc_per_node N")
    p.add_argument("--dry_run", action="store_true", help="print the command and exit")
    p.add_argument("--config_dir", default=presets.CONFIG_DIR)
    a = p.parse_args(argv)

    if a.list:
        rows = presets.describe_all(a.config_dir)
        width = max(len(n) for n, _ in rows)
        for name, desc in rows:
            print(f"{name:<{width}}  {desc}")
        return 0
    if not a.config:
        p.error("--config is required (or --list)")
    try:
        preset = presets.apply_overrides(presets.load(a.config, a.config_dir), a.override)
        cmd = preset.command(nproc=a.nproc)
    except ValueError as e:
        p.error(str(e))
    print(to_string(cmd), flush=True)
    if a.dry_run:
        return 0
    return subprocess.call(cmd, cwd=presets.ROOT)


if __name__ == "__main__":
    sys.exit(main())

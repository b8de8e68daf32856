#!/usr/bin/env python
"""Launch a preset experiment from configs/.

    python launch_experiment.py --list
    python launch_experiment.py --config quick_test
    python launch_experiment.py --config opt13b_sst2_mezo_lora --override learning_rate=1e-4 --nproc 4 --dry_run

A preset for accelerate_mezo.py runs as `accelerate_mezo.py --config configs/<name>.yaml` followed
by `--flag value` for each --override (the entry point reads the preset; later flags win). A
preset for a driver script (the grid runner) gets its args as flags. Before the command is printed
(and run), the script it calls checks it with its own parser and rules: a bad preset, override or
value is one line, exit 2, and nothing runs.
"""
from __future__ import annotations

import argparse
import contextlib
import difflib
import importlib.util
import os
import re
import subprocess
import sys

from mezo import errors
from mezo.experiments import presets
from mezo.experiments.command import SCRIPT, to_string

PROG = "launch_experiment.py"


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        errors.die(message, PROG)


class _Help(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


@contextlib.contextmanager
def _in(folder: str):
    """Relative paths of a preset mean what they mean to the command, which runs in the project root."""
    here = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(here)


def _driver(script: str):
    """A driver script (the grid runner) as a module: its check(argv) validates a command line."""
    spec = importlib.util.spec_from_file_location("_driver", os.path.join(presets.ROOT, script))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check(preset: presets.Preset, cmd: list[str], nproc: int) -> None:
    """The expanded command, checked by the script it runs (its parser and rules): BadInput, or
    ValueError naming the --override that is not one of its flags."""
    argv = cmd[cmd.index(preset.script) + 1:]
    if preset.script == SCRIPT:
        from mezo import config
        valid = presets._parser_flags(config.build_parser())
        for key, value in preset.overrides.items():
            if key not in valid:
                close = difflib.get_close_matches(key, sorted(valid), n=3)
                raise ValueError(f"--override {key}={value}: {SCRIPT} has no flag --{key}"
                                 + (f" (did you mean: {', '.join(close)})" if close else ""))
        with _in(presets.ROOT):
            try:
                config.check(argv, world_size=nproc)
            except errors.BadInput as e:  # name the --override the message is about, if it is one
                flag = re.search(r"--(\w+)", str(e))
                key = flag.group(1) if flag else None
                if key in preset.overrides:
                    raise errors.BadInput(f"--override {key}={preset.overrides[key]}: {e}") from None
                raise
    else:
        driver = _driver(preset.script)
        with _in(presets.ROOT):
            driver.check(argv)


def main(argv=None) -> int:
    p = _Parser(prog=PROG, description=__doc__, formatter_class=_Help)
    p.add_argument("--config", help="preset name (a file configs/<name>.yaml) or a preset file")
    p.add_argument("--list", action="store_true", help="list presets with their descriptions")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="a flag for the script after the preset's (repeatable); KEY is a flag, or nproc")
    p.add_argument("--nproc", type=int, default=None,
                   help="processes per node (torchrun --nproc_per_node N); default: the preset's nproc, else 1")
    p.add_argument("--dry_run", action="store_true", help="check and print the command, run nothing")
    p.add_argument("--config_dir", default=presets.CONFIG_DIR, help="the folder of the presets")
    a = p.parse_args(argv)

    if a.list:
        rows = presets.describe_all(a.config_dir)
        width = max(len(n) for n, _ in rows)
        for name, desc in rows:
            print(f"{name:<{width}}  {desc}")
        return 0
    if not a.config:
        p.error("--config is required (or --list)")
    if a.nproc is not None and a.nproc < 1:
        p.error(f"--nproc must be >= 1 (got {a.nproc})")
    try:
        preset = presets.apply_overrides(presets.load(a.config, a.config_dir), a.override)
        nproc = a.nproc if a.nproc is not None else preset.nproc
        cmd = preset.command(nproc=nproc)
        check(preset, cmd, nproc)
    except ValueError as e:  # errors.BadInput included
        p.error(str(e))
    print(to_string(cmd), flush=True)
    if a.dry_run:
        return 0
    return subprocess.call(cmd, cwd=presets.ROOT)


if __name__ == "__main__":
    sys.exit(main())

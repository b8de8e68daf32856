#!/usr/bin/env python
"""Collect every run under --results_dir into the paper's tables, beside the paper's numbers.

    python analyze_mezo_results.py --results_dir outputs/paper --output_dir outputs/analysis --create_plots

Writes table_1_opt13b_results.csv, table_18_roberta_results.csv, table_20_opt_results.csv,
table_22_memory_analysis.csv, table_23_wallclock.csv, all_results.csv (one row per cell: ours,
the paper's, the verdict, memory, step time, device-hours), runs.csv (one row per run),
mezo_reproduction_report.md and (with --create_plots) plots/*.png. --wallclock_curves also writes
wallclock_curves.png and wallclock_curves.json: dev / test accuracy against training wall-clock and
against forward passes for every MeZO run found, one colour per method and hyper-parameters (the
curves of bench/bench_methods_wallclock.py, mezo/experiments/curves.py). Runs in progress, killed or with
unreadable JSON are listed in the report, never fatal. A --results_dir that does not exist or holds
no run folder is bad input (exit 2, nothing written): an empty report would look like a result.
"""
from __future__ import annotations

import argparse
import os
import sys

from mezo import errors

PROG = "analyze_mezo_results.py"


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        errors.die(message, PROG)


class _Help(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def main(argv=None) -> int:
    p = _Parser(prog=PROG, description=__doc__, formatter_class=_Help)
    p.add_argument("--results_dir", required=True, help="the folder the runs are under (searched recursively)")
    p.add_argument("--output_dir", required=True, help="where the tables, the report and the plots go")
    p.add_argument("--create_plots", action="store_true", help="also draw loss curves and memory plots (PNG)")
    p.add_argument("--wallclock_curves", action="store_true",
                   help="also draw accuracy against wall-clock and forward passes per method (--zo_method)")
    p.add_argument("--include_incomplete", action="store_true",
                   help="count runs not marked completed, at their best evaluation so far")
    a = p.parse_args(argv)
    from mezo.experiments.results import FILES, find_runs
    from mezo.telemetry import check_writable
    if not os.path.isdir(a.results_dir):
        p.error(f"--results_dir {a.results_dir}: no such directory")
    if not find_runs(a.results_dir):
        p.error(f"--results_dir {a.results_dir}: no run folders under it (a run folder holds one of "
                f"{', '.join(FILES)})")
    try:
        check_writable("--output_dir", a.output_dir)
    except errors.BadInput as e:
        p.error(str(e))
    from mezo.experiments.report import write_all
    out = write_all(a.results_dir, a.output_dir, a.create_plots, a.include_incomplete)
    if a.wallclock_curves:
        import json

        from mezo.experiments import curves
        found = curves.collect(find_runs(a.results_dir))
        with open(os.path.join(a.output_dir, "wallclock_curves.json"), "w") as f:
            json.dump(found, f, indent=1)
        if found:
            out["plots"].append(curves.plot(found, os.path.join(a.output_dir, "wallclock_curves.png"),
                                            f"{len(found)} runs under {a.results_dir}"))
    print(f"{out['n_runs']} run folders ({out['n_not_counted']} not counted or with problems); "
          f"report: {out['report']}; {len(out['plots'])} plots")
    return 0


if __name__ == "__main__":
    sys.exit(main())

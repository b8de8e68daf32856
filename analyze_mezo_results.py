#!/usr/bin/env python
"""Collect every run under --results_dir into the paper's tables, beside the paper's numbers.

    python analyze_mezo_results.py --results_dir outputs/paper --output_dir outputs/analysis --create_plots

Writes table_1_opt13b_results.csv, table_18_roberta_results.csv, table_20_opt_results.csv,
table_22_memory_analysis.csv, table_23_wallclock.csv, all_results.csv (one row per cell: ours,
the paper's, the verdict, memory, step time, device-hours), runs.csv (one row per run),
mezo_reproduction_report.md and (with --create_plots) plots/*.png. Runs in progress, killed or with
unreadable JSON are listed in the report, never fatal.
"""
from __future__ import annotations

import argparse
import sys

from mezo.experiments.report import write_all


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results_dir", required=True)
    p.add_argument("--output_dir", required=True)
    p.add_argument("--create_plots", action="store_true")
    p.add_argument("--include_incomplete", action="store_true",
                   help="count runs not marked completed, at their best evaluation so far")
    a = p.parse_args(argv)
    out = write_all(a.results_dir, a.output_dir, a.create_plots, a.include_incomplete)
    print(f"{out['n_runs']} run folders ({out['n_not_counted']} not counted or with problems); "
          f"report: {out['report']}; {len(out['plots'])} plots")
    return 0


if __name__ == "__main__":
    sys.exit(main())

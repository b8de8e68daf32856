#!/usr/bin/env python
"""Expand the paper's grids (Malladi et al. 2023, Tables 15 and 16) into runs and launch them.

    python run_mezo_paper_experiments.py --model_family opt --grid_search --output_dir outputs/paper --dry_run
    python run_mezo_paper_experiments.py --model_family roberta --grid_search --output_dir outputs/paper \
        --create_slurm --slurm_partition gpu --slurm_gpus 1
    python run_mezo_paper_experiments.py --model_family opt --tasks SST2 --modes mezo_lora --output_dir outputs/paper

Output folders: <output_dir>/opt/<task>/<mode>/lr<lr>_eps<eps>_seed<seed> and
<output_dir>/roberta/<task>/k<k>/<mode>/lr<lr>_eps<eps>_seed<seed>. Without --grid_search each
(task, mode, seed) gets the reference README's single learning rate.
"""
from __future__ import annotations

import argparse
import os
import sys

from mezo.experiments import grids, runner, slurm
from mezo.experiments.command import to_string, training_command
from mezo.experiments.presets import ROOT


def _list(text, cast=str):
    return [cast(x) for x in text.split(",") if x] if text else None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_family", choices=["roberta", "opt"], required=True)
    p.add_argument("--model_name", default=None, help="default roberta-large / facebook/opt-13b")
    p.add_argument("--grid_search", action="store_true", help="the full learning-rate (and batch-size) grid")
    p.add_argument("--output_dir", default="outputs/paper")
    p.add_argument("--tasks", help="comma-separated subset of the family's tasks")
    p.add_argument("--modes", help="comma-separated: mezo,mezo_prefix,mezo_lora,ft,... "
                                   "(default roberta: mezo; opt: mezo,mezo_prefix,mezo_lora)")
    p.add_argument("--seeds", help="comma-separated (default roberta 13,21,42,87,100; opt 0)")
    p.add_argument("--ks", help="comma-separated k for RoBERTa (default 16,512)")
    p.add_argument("--extra", action="append", default=[], metavar="KEY=VALUE",
                   help="extra flag for every run (repeatable), e.g. data_dir=../shared/data")
    p.add_argument("--nproc", type=int, default=1, help="local runs: torchrun --nproc_per_node N")
    p.add_argument("--dry_run", action="store_true", help="list the runs and their count, run nothing")
    p.add_argument("--create_slurm", action="store_true", help="write sbatch scripts + submit_all.sh")
    p.add_argument("--slurm_partition")
    p.add_argument("--slurm_gpus", type=int, default=1, help="GPUs per node")
    p.add_argument("--slurm_nodes", type=int, default=1)
    p.add_argument("--slurm_time", default="24:00:00")
    p.add_argument("--slurm_account")
    p.add_argument("--slurm_dir", help="where the scripts go (default <output_dir>/slurm_<family>)")
    return p


def planned_runs(a) -> list[tuple[str, dict]]:
    from mezo.experiments.presets import parse_value
    runs = grids.expand(a.model_family, grid_search=a.grid_search, model_name=a.model_name,
                        tasks=_list(a.tasks), modes=_list(a.modes), seeds=_list(a.seeds, int), ks=_list(a.ks, int))
    extra = {k: parse_value(v) for k, v in (e.split("=", 1) for e in a.extra)}
    return [(r.name, {**grids.with_output(r, a.output_dir), **extra}) for r in runs]


def main(argv=None) -> int:
    p = build_parser()
    a = p.parse_args(argv)
    if a.create_slurm and not a.slurm_partition:
        p.error("--create_slurm needs --slurm_partition")
    if not a.dry_run:  # scripts and runs execute from the project root
        a.output_dir = os.path.abspath(a.output_dir)
    runs = planned_runs(a)

    if a.dry_run:
        for name, args in runs:
            print(f"{name}\n  {to_string(training_command(args, a.nproc))}")
        print(f"{len(runs)} runs")
        return 0
    if a.create_slurm:
        opts = slurm.SlurmOptions(partition=a.slurm_partition, gpus=a.slurm_gpus, nodes=a.slurm_nodes,
                                  time=a.slurm_time, account=a.slurm_account)
        script_dir = a.slurm_dir or os.path.join(a.output_dir, f"slurm_{a.model_family}")
        paths = slurm.write_scripts(runs, opts, script_dir, ROOT)
        print(f"wrote {len(paths) - 1} sbatch scripts and {paths[-1]}")
        return 0
    counts = runner.run_all(runs, nproc=a.nproc, cwd=ROOT)
    print(f"{len(runs)} runs: {counts['completed']} completed now, {counts['skipped']} skipped "
          f"(already completed), {counts['failed']} failed")
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())

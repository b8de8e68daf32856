#!/usr/bin/env python
"""Expand the paper's grids (Malladi et al. 2023, Tables 15 and 16) into runs and launch them.

    python run_mezo_paper_experiments.py --model_family opt --grid_search --output_dir outputs/paper --dry_run
    python run_mezo_paper_experiments.py --model_family roberta --grid_search --output_dir outputs/paper \
        --create_slurm --slurm_partition gpu --slurm_gpus 1
    python run_mezo_paper_experiments.py --model_family opt --tasks SST2 --modes mezo_lora --output_dir outputs/paper

Output folders: <output_dir>/opt/<task>/<mode>/lr<lr>_eps<eps>_seed<seed> and
<output_dir>/roberta/<task>/k<k>/<mode>/lr<lr>_eps<eps>_seed<seed>. Without --grid_search each
(task, mode, seed) gets the reference README's single learning rate.

Everything is checked before anything is written or run: the tasks, modes, k, seeds and --extra
flags (each run's command with the training script's parser), and every run folder that already
holds a run (its run_config.json must be this grid's run: a folder written with other settings
is refused, never skipped as "completed"). A completed run is skipped; an unfinished MeZO run is
continued (--resume_from_checkpoint auto); an unfinished run of another trainer is started again.
"""
from __future__ import annotations

import argparse
import os
import sys

from mezo import errors, hparams
from mezo.errors import BadInput
from mezo.experiments import grids, runner, slurm
from mezo.experiments.command import to_string, training_command
from mezo.experiments.presets import ROOT

PROG = "run_mezo_paper_experiments.py"


class _Parser(argparse.ArgumentParser):
    raising = False

    def error(self, message):  # one line, exit 2
        if self.raising:
            raise BadInput(message)
        errors.die(message, PROG)


class _Help(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def _list(text: str | None, flag: str, cast=str) -> list | None:
    if not text:
        return None
    try:
        return [cast(x.strip()) for x in text.split(",") if x.strip()]
    except ValueError:
        raise BadInput(f"--{flag} {text}: a comma-separated list of {cast.__name__}s") from None


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description=__doc__, formatter_class=_Help)
    p.add_argument("--model_family", choices=["roberta", "opt"], required=True, help="which grid: Table 15 or 16")
    p.add_argument("--model_name", default=None, help="default roberta-large / facebook/opt-13b")
    p.add_argument("--grid_search", action="store_true", help="the full learning-rate (and batch-size) grid")
    p.add_argument("--output_dir", default="outputs/paper", help="the runs' folders go under it")
    p.add_argument("--tasks", help="comma-separated subset of the family's tasks (default: all)")
    p.add_argument("--modes", help="comma-separated: mezo,mezo_prefix,mezo_lora,ft,... "
                                   "(default roberta: mezo; opt: mezo,mezo_prefix,mezo_lora)")
    p.add_argument("--seeds", help="comma-separated (default roberta 13,21,42,87,100; opt 0)")
    p.add_argument("--ks", help="comma-separated k for RoBERTa (default 16,512)")
    p.add_argument("--extra", action="append", default=[], metavar="KEY=VALUE",
                   help="extra flag for every run (repeatable), e.g. data_dir=../shared/data")
    p.add_argument("--nproc", type=int, default=1, help="local runs: torchrun --nproc_per_node N")
    p.add_argument("--dry_run", action="store_true", help="check and list the runs and their count, run nothing")
    p.add_argument("--create_slurm", action="store_true", help="write sbatch scripts + submit_all.sh")
    p.add_argument("--slurm_partition", help="SLURM partition (required with --create_slurm)")
    p.add_argument("--slurm_gpus", type=int, default=1, help="GPUs per node")
    p.add_argument("--slurm_nodes", type=int, default=1, help="nodes per run")
    p.add_argument("--slurm_time", default="24:00:00", help="time limit per job (requeued on preemption)")
    p.add_argument("--slurm_account", help="SLURM account")
    p.add_argument("--slurm_dir", help="where the scripts go (default <output_dir>/slurm_<family>)")
    p.add_argument("--slurm_python", default=sys.executable,
                   help="the Python the jobs run (torchrun is its `-m torch.distributed.run`): the interpreter "
                        "that writes the scripts, so a job runs the code and libraries of the dry run")
    p.add_argument("--slurm_setup", default=None,
                   help="a shell line each job runs first, e.g. 'module load cuda/12.4 && source .venv/bin/activate'")
    return p


def _canonical(names: list[str] | None, valid: tuple, flag: str, family: str) -> list | None:
    if names is None:
        return None
    by_key = {str(v).lower().replace("-", "").replace("_", ""): v for v in valid}
    out = []
    for n in names:
        key = str(n).lower().replace("-", "").replace("_", "")
        if key not in by_key:
            raise BadInput(f"--{flag} {n}: not in the {family} grid (valid: {', '.join(map(str, valid))})")
        out.append(by_key[key])
    return out


def planned_runs(a) -> list[tuple[str, dict]]:
    """The grid's runs as (name, flags); BadInput for a task, mode, k, seed or --extra the grid or
    the training script does not know."""
    from mezo.experiments.presets import parse_value
    fam = a.model_family
    tasks = _canonical(_list(a.tasks, "tasks"), hparams.OPT_TASKS if fam == "opt" else hparams.ROBERTA_TASKS,
                       "tasks", fam)
    modes = _canonical(_list(a.modes, "modes"), tuple(hparams.MODES[fam]), "modes", fam)
    seeds = _list(a.seeds, "seeds", int)
    ks = _list(a.ks, "ks", int)
    if fam == "opt" and ks:
        raise BadInput("--ks applies to --model_family roberta (k-shot data)")
    _canonical(ks, hparams.ROBERTA_KS, "ks", fam)
    if fam == "roberta":
        _canonical(seeds, hparams.ROBERTA_SEEDS, "seeds", fam)  # the LM-BFF data seeds
    elif seeds and min(seeds) < 0:
        raise BadInput(f"--seeds {a.seeds}: train-set seeds are >= 0")
    for flag in ("nproc", "slurm_gpus", "slurm_nodes"):
        if getattr(a, flag) < 1:
            raise BadInput(f"--{flag} must be >= 1 (got {getattr(a, flag)})")
    extra = {}
    for item in a.extra:
        if "=" not in item:
            raise BadInput(f"--extra {item}: expected KEY=VALUE (a flag of accelerate_mezo.py and its value)")
        key, text = item.split("=", 1)
        key = key.strip().removeprefix("--")
        if key == "output_dir":
            raise BadInput(f"--extra {item}: the grid names each run's folder; pass --output_dir")
        extra[key] = parse_value(text)
    try:
        runs = grids.expand(fam, grid_search=a.grid_search, model_name=a.model_name, tasks=tasks, modes=modes,
                            seeds=seeds, ks=ks)
    except ValueError as e:
        raise BadInput(str(e)) from None
    planned = [(r.name, {**grids.with_output(r, a.output_dir), **extra}) for r in runs]
    _check_commands(planned, extra)
    return planned


def _check_commands(planned: list[tuple[str, dict]], extra: dict) -> None:
    """Each run's command parses with the training script's parser (a bad --extra names itself)."""
    from mezo import config
    from mezo.experiments.command import flag_args
    from mezo.experiments.presets import _parser_flags
    parser = config.build_parser()
    parser.raising = True
    valid = _parser_flags(parser)
    for key in extra:
        if key not in valid:
            raise BadInput(f"--extra {key}={extra[key]}: accelerate_mezo.py has no flag --{key}")
    for name, args in planned:
        try:
            parser.parse_args(flag_args(args))
        except BadInput as e:
            raise BadInput(f"{name}: {e}" + (f" (--extra {', '.join(extra)})" if extra else "")) from None


def check(argv) -> list[tuple[str, dict]]:
    """The runs of a command line, every check done (launch_experiment.py's dry run calls this);
    BadInput naming what is wrong."""
    p = build_parser()
    p.raising = True
    a = p.parse_args(argv)
    if a.create_slurm and not a.slurm_partition:
        raise BadInput("--create_slurm needs --slurm_partition")
    runs = planned_runs(a)
    runner.check_folders(runs)
    return runs


def main(argv=None) -> int:
    p = build_parser()
    a = p.parse_args(argv)
    try:
        if a.create_slurm and not a.slurm_partition:
            raise BadInput("--create_slurm needs --slurm_partition")
        if not a.dry_run:  # scripts and runs execute from the project root
            a.output_dir = os.path.abspath(a.output_dir)
        runs = planned_runs(a)
        states = runner.check_folders(runs)
    except BadInput as e:
        errors.die(str(e), PROG)

    if a.dry_run:
        for name, args in runs:
            print(f"{name}\n  {to_string(training_command(args, a.nproc))}")
        print(f"{len(runs)} runs")
        return 0
    if a.create_slurm:
        opts = slurm.SlurmOptions(partition=a.slurm_partition, gpus=a.slurm_gpus, nodes=a.slurm_nodes,
                                  time=a.slurm_time, account=a.slurm_account, python=a.slurm_python,
                                  setup=a.slurm_setup)
        script_dir = a.slurm_dir or os.path.join(a.output_dir, f"slurm_{a.model_family}")
        paths = slurm.write_scripts(runs, opts, script_dir, ROOT)
        print(f"wrote {len(paths) - 1} sbatch scripts and {paths[-1]}")
        return 0
    counts = runner.run_all(runs, nproc=a.nproc, cwd=ROOT, states=states)
    print(f"{len(runs)} runs: {counts['completed']} completed now, {counts['skipped']} skipped "
          f"(already completed), {counts['failed']} failed")
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())

"""Every row of the paper's grids runs (issue 13): `run_mezo_paper_experiments.py --grid_search`
for OPT and RoBERTa, every mode the grids know, each row run for 2 steps on a tiny model of its
family with real rows from tests/data, exit 0.

The full product is 127 OPT and 2280 RoBERTa rows; they are grouped so that the test stays in
minutes while every code path a row can take runs. Two rows share a group when they have the
same family, mode, task shape (the task's kind and training loss: classification, multiple choice
with the teacher-forced loss, generation) and the same flags, with the same values for every
flag except the numbers that only scale a run (learning rate, eps, batch size, steps, seeds, data
sizes and k, weight decay; see SCALARS). One row per group runs, plus one MeZO row for each task
no group representative covers (so every task's data loading and prompts run too). What the
swap changes in a row: the model (the tiny one), the data (tests/data), sizes (2 steps, a few
examples) and --zo_backend eager (the compiled sweep is the same arithmetic, tested in
tests/unit/test_zo.py, and compiling it costs ~10 s a process); the rest of the row's flags are
passed as the grid writes them (--dtype fp16 and --numerics reference for OPT, batch sizes,
gradient accumulation, LoRA/prefix settings, schedules).
"""
from __future__ import annotations

import json
import os
import sys

import pytest

from helpers import TEST_DATA, build_model, build_roberta, run_script

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from mezo import hparams  # noqa: E402
from mezo.experiments import grids  # noqa: E402
from mezo.experiments.command import flag_args  # noqa: E402
from mezo.tasks import get_task  # noqa: E402

# flags whose value only scales a run: rows differing only in these take the same code path
SCALARS = {"learning_rate", "zo_eps", "seed", "data_seed", "train_set_seed", "batch_size", "max_steps",
           "eval_steps", "save_steps", "num_train", "num_dev", "num_eval", "k", "weight_decay", "model_name",
           "task_name", "gradient_accumulation_steps"}


def _family(family: str) -> str:
    return "mlm" if family == "roberta" else "causal"


def _signature(run: grids.Run) -> tuple:
    task = get_task(run.task, family=_family(run.family))
    return (run.family, run.mode, task.kind, task.train_loss, tuple(sorted(run.args)),
            tuple(sorted((k, str(v)) for k, v in run.args.items() if k not in SCALARS)))


def representatives(family: str) -> tuple[list[grids.Run], int, int]:
    """(the rows to run, rows in the grid, groups): one row per group (k 16 and data seed 13,
    whose LM-BFF split files tests/data has, where the group has such a row), then a MeZO row for
    each task not yet covered."""
    runs = grids.expand(family, grid_search=True, modes=list(hparams.MODES[family]))
    groups: dict[tuple, list[grids.Run]] = {}
    for r in runs:
        groups.setdefault(_signature(r), []).append(r)
    pick = []
    for rows in groups.values():
        pref = [r for r in rows if r.k in (None, 16) and r.args.get("data_seed", 13) == 13]
        pick.append((pref or rows)[0])
    covered = {r.task for r in pick}
    for r in runs:
        if r.task not in covered and r.mode == "mezo" and r.args.get("data_seed", 13) == 13 and r.k in (None, 16):
            pick.append(r)
            covered.add(r.task)
    assert covered == {r.task for r in runs}
    assert {r.mode for r in pick} == set(hparams.MODES[family])
    return pick, len(runs), len(groups)


def tiny_args(run: grids.Run, model: str, out: str) -> dict:
    """The row's flags with the tiny model, tests/data, 2 steps and a few examples."""
    a = dict(run.args, model_name=model, data_dir=TEST_DATA, output_dir=out)
    if "max_steps" in a:
        a.update(max_steps=2, eval_steps=2)
    if "save_steps" in a:
        a["save_steps"] = 2
    if run.family == "opt":
        a.update(num_train=min(a["num_train"], 6), num_dev=min(a["num_dev"], 2), num_eval=4)
    else:
        a["num_eval"] = 4
    if a.get("trainer") == "mezo":
        a["zo_backend"] = "eager"
    return a


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    return {"opt": build_model(str(tmp_path_factory.mktemp("tiny_opt")), arch="opt"),
            "roberta": build_roberta(str(tmp_path_factory.mktemp("tiny_roberta")))}


def test_groups_cover_every_row():
    """The grouping: every (family, mode) and every task has a row that runs; the counts are the
    grids' (a row added to a grid lands in a group, or makes a new one)."""
    for family, n_rows in (("opt", 127), ("roberta", 2280)):
        pick, rows, n_groups = representatives(family)
        assert rows == n_rows and len(pick) >= n_groups


@pytest.mark.parametrize("family", ["opt", "roberta"])
def test_every_grid_row_runs_two_steps(family, tiny_models, tmp_path):
    pick, _, _ = representatives(family)
    failed = []
    for i, run in enumerate(pick):
        out = tmp_path / f"{i:02d}-{run.name}"
        args = tiny_args(run, tiny_models[family], str(out))
        r = run_script(flag_args(args), timeout=600)
        if r.returncode != 0:
            failed.append(f"{run.name}: exit {r.returncode}: {(r.stderr or r.stdout).strip().splitlines()[-1:]}")
            continue
        m = json.load(open(out / "training_metrics.json"))
        assert m["status"] == "completed", run.name
        exp = json.load(open(out / "experiment_config.json"))
        if family == "opt" and args.get("trainer") == "mezo":  # the reference's fp16 in-place numerics
            assert (exp["dtype"], exp["numerics"]) == ("fp16", "reference"), run.name
        if args.get("trainer") == "ft" and args.get("dtype") == "fp16":  # Trainer --fp16: AMP
            assert exp["amp"] is True and exp["weights_dtype"] == "fp32", run.name
        if "max_steps" in args and args.get("trainer") != "linear_probe":
            assert len(m["steps"]) == 2, run.name
    assert not failed, "\n".join(failed)

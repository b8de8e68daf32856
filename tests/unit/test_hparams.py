"""mezo/hparams.py, the one table of the paper's hyper-parameters: its values against the paper
(Malladi et al. 2023, Appendix E.3, Tables 15 and 16, and the reference READMEs), and the three
readers agreeing with it: --paper_hparams (paper_defaults), the grids and the presets. CPU, offline,
seconds."""
from __future__ import annotations

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from mezo import hparams  # noqa: E402
from mezo.experiments import grids, presets  # noqa: E402
from mezo.experiments.command import SCRIPT, flag_args  # noqa: E402

TRAINING_MODES = {"roberta": ["mezo", "mezo_prefix", "mezo_lora", "ft", "ft_prefix", "ft_lora"],
                  "opt": ["mezo", "mezo_prefix", "mezo_lora", "ft"]}
ALL_MODES = ["mezo", "mezo_prefix", "mezo_lora", "ft", "ft_prefix", "ft_lora", "zero_shot", "icl", "linear_probe"]

# What --paper_hparams fills, written out from the paper: the single runs are the reference
# READMEs' commands, steps / evaluation / schedule medium_models/mezo.sh and large_models/mezo.sh.
_RM = dict(max_steps=100000, eval_steps=10000, lr_scheduler_type="constant")
_RF = dict(max_steps=1000, eval_steps=100, lr_scheduler_type="linear")
_OM = dict(max_steps=20000, eval_steps=4000, lr_scheduler_type="constant")
PAPER_RUNS = {
    "roberta": {
        "mezo": dict(batch_size=64, learning_rate=1e-6, zo_eps=1e-3, weight_decay=0.0, **_RM),
        "mezo_prefix": dict(batch_size=64, learning_rate=1e-2, zo_eps=1e-1, weight_decay=0.0, **_RM, num_prefix=5),
        "mezo_lora": dict(batch_size=64, learning_rate=1e-4, zo_eps=1e-3, weight_decay=0.1, **_RM,
                          lora_r=8, lora_alpha=16),
        "ft": dict(batch_size=8, learning_rate=1e-5, weight_decay=0.0, **_RF),
        "ft_prefix": dict(batch_size=8, learning_rate=1e-2, **_RF, num_prefix=5),
        "ft_lora": dict(batch_size=8, learning_rate=1e-4, **_RF, lora_r=8, lora_alpha=16),
    },
    "opt": {
        "mezo": dict(batch_size=16, learning_rate=1e-7, zo_eps=1e-3, weight_decay=0.0, **_OM),
        "mezo_prefix": dict(batch_size=16, learning_rate=1e-3, zo_eps=1e-1, weight_decay=0.0, **_OM, num_prefix=5),
        "mezo_lora": dict(batch_size=16, learning_rate=5e-5, zo_eps=1e-2, weight_decay=0.0, **_OM,
                          lora_r=8, lora_alpha=16),
        "ft": dict(batch_size=8, learning_rate=1e-5, weight_decay=0.0, max_steps=625, eval_steps=125,
                   lr_scheduler_type="linear"),
    },
}
PAPER_DATA = {"roberta": dict(k=16, data_seed=42, num_eval=1000), "opt": dict(num_train=1000, num_eval=1000)}


def _typed(d: dict) -> list:
    return [(k, type(v), v) for k, v in d.items()]


# ---------------------------------------------------------------- the table against the paper
@pytest.mark.parametrize("family", ["roberta", "opt"])
@pytest.mark.parametrize("mode", ALL_MODES)
def test_paper_defaults_are_the_papers_values(family, mode):
    """Same keys (in order), values and types (ints stay ints) as --paper_hparams always filled."""
    want = {**PAPER_RUNS[family].get(mode, {}), **PAPER_DATA[family]}
    assert _typed(hparams.paper_defaults(family, mode)) == _typed(want)
    if family == "opt":
        assert _typed(hparams.paper_defaults(family, mode, 100)) == _typed({**want, "num_dev": 100})
    else:  # masked-LM runs take k examples per class; the dev size does not apply
        assert hparams.paper_defaults(family, mode, 100) == want


def test_paper_defaults_returns_a_copy_and_rejects_other_families():
    hparams.paper_defaults("opt", "mezo")["learning_rate"] = 1.0
    assert hparams.paper_defaults("opt", "mezo")["learning_rate"] == 1e-7
    with pytest.raises(ValueError, match="roberta or opt"):
        hparams.paper_defaults("llama", "mezo")


def test_grids_of_table_15_roberta():
    m = hparams.ROBERTA_MODES
    assert [(k, m[k].lrs) for k in TRAINING_MODES["roberta"]] == [
        ("mezo", (1e-7, 1e-6, 1e-5)), ("mezo_prefix", (1e-2, 5e-3, 1e-3)), ("mezo_lora", (1e-5, 5e-5, 1e-4)),
        ("ft", (1e-5, 3e-5, 5e-5)), ("ft_prefix", (1e-2, 3e-2, 5e-2)), ("ft_lora", (1e-4, 3e-4, 5e-4))]
    assert [m[k].batch_grid(16) for k in TRAINING_MODES["roberta"]] == [(64,), (64,), (64,), (2, 4, 8), (8, 16, 32),
                                                                        (4, 8, 16)]
    assert m["ft"].batch_grid(512) == (8, 16, 32)
    assert (hparams.ROBERTA_TASKS, hparams.ROBERTA_KS, hparams.ROBERTA_SEEDS) == (
        ("SST-2", "SST-5", "SNLI", "MNLI", "TREC", "RTE"), (16, 512), (13, 21, 42, 87, 100))
    assert hparams.ROBERTA_MODEL == "roberta-large"


def test_grids_of_table_16_opt():
    m = hparams.OPT_MODES
    assert [(k, m[k].lrs, m[k].lrs_generation) for k in TRAINING_MODES["opt"]] == [
        ("mezo", (1e-6, 1e-7), (1e-6, 5e-7, 1e-7)), ("mezo_prefix", (1e-2, 1e-3), (5e-2, 1e-2, 5e-3)),
        ("mezo_lora", (1e-4, 5e-5), (1e-4, 5e-5, 1e-5)), ("ft", (1e-5, 5e-5, 8e-5), ())]
    assert [m[k].batch_grid() for k in TRAINING_MODES["opt"]] == [(16,), (16,), (16,), (8,)]
    assert hparams.OPT_TASKS == ("SST2", "RTE", "CB", "BoolQ", "WSC", "WiC", "MultiRC", "Copa", "ReCoRD", "SQuAD",
                                 "DROP")
    assert hparams.OPT_GENERATION == ("SQuAD", "DROP") and hparams.OPT_SEEDS == (0,)
    assert [hparams.opt_num_dev(t) for t in ("SST2", "CB", "Copa", "SQuAD")] == [500, 100, 100, 500]
    assert hparams.OPT_FT_MICRO_BATCH == {"MultiRC": 2, "ReCoRD": 2, "DROP": 1}
    assert (hparams.OPT_MODEL, hparams.OPT_DTYPE, hparams.ICL_DEMOS) == ("facebook/opt-13b", "fp16", 32)


@pytest.mark.parametrize("family", ["roberta", "opt"])
def test_each_single_run_is_a_point_of_its_grid(family):
    for mode in TRAINING_MODES[family]:
        m = hparams.MODES[family][mode]
        assert m.run["learning_rate"] in m.lrs, mode
        for k in (hparams.ROBERTA_KS if family == "roberta" else (None,)):
            assert m.run["batch_size"] in m.batch_grid(k), (mode, k)


def test_the_tasks_dev_sizes_are_the_tables():
    from mezo.tasks import get_task
    for task in hparams.OPT_TASKS:
        assert get_task(task).num_dev == hparams.opt_num_dev(task), task


# ---------------------------------------------------------------- the readers agree with it
@pytest.fixture(scope="module")
def parser():
    config = pytest.importorskip("mezo.config")
    return config.build_parser()


def _parsed(parser, args: dict) -> dict:
    """The values the training script reads for these flags ('1e-7' and 1e-07 are the same run)."""
    return vars(parser.parse_args(flag_args(args)))


@pytest.mark.parametrize("family", ["roberta", "opt"])
def test_grid_single_runs_are_what_paper_hparams_fills(family, parser):
    """Without --grid_search each run is the table's single run: --paper_hparams would give the same."""
    # CB: a small dev set; DROP: an FT micro-batch; RoBERTa: the table's k and data seed
    kw = dict(tasks=["CB", "DROP"]) if family == "opt" else dict(tasks=["RTE"], ks=[16], seeds=[42])
    for mode, run in ((r.mode, r) for r in grids.expand(family, modes=TRAINING_MODES[family], **kw)):
        got = _parsed(parser, run.args)
        want = hparams.paper_defaults(family, mode, hparams.opt_num_dev(run.task))
        if family == "roberta":  # the grid runs evaluate on all of the test set (at most 1000)
            want.pop("num_eval")
        for key, value in want.items():
            if key == "batch_size" and "gradient_accumulation_steps" in run.args:
                value //= run.args["gradient_accumulation_steps"]
            assert got[key] == value, (run.name, key)
        assert got["save_steps"] == want["eval_steps"], run.name  # a checkpoint at every evaluation


def _mode(args: dict) -> str:
    if args.get("zero_shot") or args.get("icl"):
        return "zero_shot" if args.get("zero_shot") else "icl"
    base = "ft" if args.get("trainer") == "ft" else "mezo"
    return base + ("_lora" if args.get("use_lora") else "_prefix" if args.get("prefix_tuning") else "")


def _paper_presets():
    """(preset, the grid run it is) for every paper preset of accelerate_mezo.py."""
    out = []
    for name in presets.preset_names():
        p = presets.load(name)
        if name == "quick_test" or p.script != SCRIPT:  # not a paper setting / the grid runner
            continue
        family, task, mode = p.args["model_family"], p.args["task_name"], _mode(p.args)
        kw = dict(ks=[p.args["k"]], seeds=[p.args["data_seed"]]) if family == "roberta" else {}
        out.append((p, family, task, mode, grids.expand(family, tasks=[task], modes=[mode], **kw)[0]))
    return out


def test_every_paper_preset_is_a_grid_run(parser):
    """A paper preset with `paper_hparams: true` gets the table's values for its family, mode and
    task (its own flags win): together they must be the grid's single run, and a preset that
    restates a value (or sets one the grid does not) must agree with the table."""
    checked = []
    for p, family, task, mode, run in _paper_presets():
        own = {k: v for k, v in p.args.items() if k not in ("output_dir", "paper_hparams")}
        effective = dict(own)
        if p.args.get("paper_hparams"):
            effective = {**hparams.paper_defaults(family, mode, hparams.opt_num_dev(task)), **own}
            if "zo_eps" in effective:  # MeZO: --paper_hparams resolves --numerics auto to reference
                effective.setdefault("numerics", "reference")
            assert set(run.args) <= set(effective), (p.name, set(run.args) - set(effective))
        assert set(own) <= set(run.args), (p.name, set(own) - set(run.args))
        got, want = _parsed(parser, effective), _parsed(parser, run.args)
        for key in set(run.args) & set(effective):
            assert got[key] == want[key], (p.name, key, got[key], want[key])
        checked.append(p.name)
    for name in ["opt13b_sst2_mezo", "opt13b_cb_mezo", "opt13b_sst2_mezo_lora", "opt13b_sst2_mezo_prefix",
                 "opt13b_icl_sst2", "opt13b_zero_shot_sst2", "roberta_sst2_reproduction"]:
        assert name in checked


def test_paper_preset_descriptions_name_the_tables_values():
    for p, family, task, mode, run in _paper_presets():
        r = hparams.MODES[family][mode].run
        if r:
            words = f"bs{r['batch_size']} lr{grids.fmt(r['learning_rate'])} eps{grids.fmt(r['zo_eps'])}"
            assert words in p.description, (p.name, words)


def test_paper_presets_do_not_restate_the_table():
    """k and data seed may stay: they are axes of the RoBERTa grid, a preset names its point."""
    for p, family, task, mode, run in _paper_presets():
        if p.args.get("paper_hparams"):
            restated = set(p.args) & (set(hparams.paper_defaults(family, mode, 500)) - {"k", "data_seed"})
            assert not restated, (p.name, restated)

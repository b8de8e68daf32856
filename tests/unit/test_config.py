"""mezo/config.py and mezo/resume.py: flags resolve once into a frozen Config; each rule is
checked in one place; the resume plan is a field, the user's flags stay as given. No model is
loaded: the default model's family comes from the offline package's file name."""
import dataclasses
import os

import re

import pytest

from helpers import SAMPLE
from mezo import config, resume, trajectory as T
from mezo.errors import BadInput


def _cfg(tmp_path, *flags, world=1):
    ns = config.build_parser().parse_args(["--output_dir", str(tmp_path / "out"), *flags])
    return config.resolve(ns, world)


def test_sections_are_frozen_and_the_namespace_is_not_touched(tmp_path):
    ns = config.build_parser().parse_args(["--output_dir", str(tmp_path), "--max_train_samples", "7"])
    before = dict(vars(ns))
    cfg = config.resolve(ns)
    assert vars(ns) == before  # resolve reads the flags, writes nothing back
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.learning_rate = 1.0
    with pytest.raises(TypeError):
        cfg.flags["learning_rate"] = 1.0
    assert cfg.data.num_train == 7 and cfg.flags["num_train"] == 7  # --max_train_samples wins


def test_derived_values_are_fields(tmp_path):
    cfg = _cfg(tmp_path)
    assert (cfg.model.family, cfg.model.task_family, cfg.data.family) == ("llama", "causal", "causal")
    assert cfg.data.task_name == "SST2" and os.path.samefile(cfg.data.data_dir, SAMPLE)  # bundled, no --data_dir
    assert cfg.train.forward_batch_size == 4 and cfg.data.num_eval == 200  # auto on CPU (batch 16); causal default
    assert cfg.train.trainer == "mezo" and cfg.mode == "mezo" and cfg.checkpoint.plan.fresh
    assert _cfg(tmp_path, "--zero_shot", "--num_train", "0").train.trainer == "zero_shot"
    assert _cfg(tmp_path, "--trainer", "ft", "--use_lora").mode == "ft_lora"
    assert _cfg(tmp_path, "--data_dir", "hub").data.data_dir is None


@pytest.mark.parametrize("flags,numerics", [
    ([], "stochastic"), (["--dtype", "bf16"], "stochastic"), (["--dtype", "fp16"], "stochastic"),
    (["--master_weights"], "master"), (["--dtype", "bf16", "--no_master_weights"], "reference"),
    (["--numerics", "master", "--master_weights"], "master"), (["--paper_hparams"], "reference"),
    (["--prefix_tuning"], "reference"), (["--prefix_tuning", "--dtype", "bf16"], "master"),
    (["--non_diff", "--dtype", "bf16"], "master"), (["--numerics", "stochastic", "--non_diff"], "stochastic")])
def test_numerics_resolved(tmp_path, flags, numerics):
    """auto: stochastic wherever the dual forward applies, reference under --paper_hparams; the
    aliases --master_weights / --no_master_weights name master / reference."""
    zo = _cfg(tmp_path, *flags).zo
    assert zo.numerics == numerics and zo.master_weights is (numerics == "master")


@pytest.mark.parametrize("flags,needle", [
    (["--numerics", "master", "--no_master_weights"], "--no_master_weights (= --numerics reference) contradicts --numerics master"),
    (["--numerics", "stochastic", "--prefix_tuning"], "prefix tuning's prefixes are read directly by their parent")])
def test_numerics_contradictions(tmp_path, flags, needle):
    with pytest.raises(BadInput, match=re.escape(needle)):
        _cfg(tmp_path, *flags)


@pytest.mark.parametrize("flags,numerics", [
    (["--dtype", "fp16", "--paper_hparams"], "reference"),   # the reference's mezo.sh --load_float16
    (["--dtype", "fp16", "--paper_hparams", "--numerics", "master"], "master"),  # one flag away
    (["--dtype", "fp16", "--numerics", "reference"], "reference"),
])
def test_numerics_paper_and_explicit(tmp_path, flags, numerics):
    """--paper_hparams resolves auto to the reference's in-place numerics (before the flag, fp16
    kept an fp32 master copy); an explicit --numerics wins; both are recorded."""
    cfg = _cfg(tmp_path, *flags)
    assert (cfg.zo.numerics, cfg.zo.master_weights) == (numerics, numerics == "master")
    assert cfg.settings()["numerics"] == numerics and cfg.flags["numerics"] == numerics


def test_paper_presets_resolve_to_reference_numerics(tmp_path):
    """Every training preset that says paper_hparams: true runs the reference's numerics (the OPT
    ones in fp16, before: an fp32 master copy); --numerics master after it gives the project's."""
    from mezo.experiments import presets
    names = [n for n in presets.preset_names() if presets.load(n).args.get("paper_hparams")
             and presets.load(n).script == presets.SCRIPT]
    assert len(names) >= 10
    for name in names:
        argv = ["--config", name, "--output_dir", str(tmp_path / name), "--data_dir", "hub"]
        assert config.parse(argv).zo.numerics == "reference", name
        assert config.parse(argv + ["--numerics", "master"]).zo.numerics == "master", name
    assert config.parse(["--config", "opt13b_sst2_mezo", "--output_dir", str(tmp_path / "x"), "--data_dir",
                         "hub"]).model.dtype == "fp16"


def test_old_headers_imply_numerics_from_master_weights():
    """Trajectories and manifests written before --numerics: master_weights implies it."""
    assert resume.saved_value({"master_weights": True}, "numerics") == "master"
    assert resume.saved_value({"use_master": False}, "numerics") == "reference"
    assert resume.saved_value({"numerics": "master", "master_weights": True}, "numerics") == "master"
    assert resume.saved_value({}, "numerics") is None and resume.saved_value({}, "tie_emb") is True
    s = {"model_name": "m", "gguf_file": None, **{k: 0 for k in resume.MUST_MATCH}, "master_weights": False,
         "numerics": "reference", "lr_scheduler_type": "constant"}
    old = {k: v for k, v in s.items() if k != "numerics"}
    resume.check_compatible("ckpt", old, s)
    with pytest.raises(BadInput, match="--numerics 'master', this run has 'reference'"):
        resume.check_compatible("ckpt", {**old, "master_weights": True}, {**s, "master_weights": True})


def test_fp16_backprop_is_mixed_precision(tmp_path):
    """--trainer ft --dtype fp16 (the grids' OPT FT rows) is accepted as AMP: fp32 weights, fp16
    autocast, loss scaling; other trainers and dtypes are not AMP. Clipping defaults to 1.0."""
    cfg = _cfg(tmp_path, "--trainer", "ft", "--dtype", "fp16")
    assert cfg.ft.amp and cfg.ft.max_grad_norm == 1.0
    assert not _cfg(tmp_path, "--trainer", "ft", "--dtype", "bf16").ft.amp
    assert not _cfg(tmp_path, "--dtype", "fp16").ft.amp
    assert _cfg(tmp_path, "--trainer", "ft", "--max_grad_norm", "0").ft.max_grad_norm == 0


def test_settings_are_the_trajectory_header(tmp_path):
    cfg = _cfg(tmp_path, "--seed", "7", "--dtype", "bf16")
    h = T.header(cfg.settings(), world_size=2)
    assert h["seed"] == 7 and h["numerics"] == "stochastic" and h["master_weights"] is False
    assert h["fused"] is True and h["world_size"] == 2
    assert set(resume.MUST_MATCH) <= set(cfg.settings())


@pytest.mark.parametrize("flags,needle", [
    (["--trainer", "ft", "--non_diff"], "--non_diff needs --trainer mezo"),
    (["--trainer", "linear_probe", "--use_lora"], "--trainer linear_probe trains a classifier"),
    (["--numerics", "reference", "--master_weights"], "--master_weights (= --numerics master) contradicts --numerics"),
    (["--master_weights", "--no_master_weights"], "--master_weights and --no_master_weights contradict"),
    (["--trainer", "ft", "--max_grad_norm", "-1"], "--max_grad_norm must be >= 0"),
    (["--zo_eps", "0"], "--zo_eps must be > 0 (got 0.0)"),
    (["--save_steps", "-1"], "--save_steps must be >= 0 (got -1)"),
    (["--k", "16"], "--k 16 applies to masked-LM tasks"),
    (["--batch_size", "3"], "is not divisible by the number of processes (2)"),
])
def test_each_rule_raises_bad_input_naming_the_flag(tmp_path, flags, needle):
    with pytest.raises(BadInput) as e:
        _cfg(tmp_path, *flags, world=2)
    assert needle in str(e.value)


def test_parse_prints_one_line_and_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        config.parse(["--output_dir", str(tmp_path), "--learning_rate", "-1"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["accelerate_mezo.py: error: --learning_rate must be > 0 (got -1.0)"]


def test_auto_resume_plan_keeps_the_flags_as_given(tmp_path):
    """A trajectory in --output_dir and no checkpoint: auto replays it; --resume_trajectory stays
    the user's (None) and the plan says what happens."""
    cfg = _cfg(tmp_path, "--max_steps", "5")
    path = os.path.join(cfg.output.dir, T.FILENAME)
    os.makedirs(cfg.output.dir)  # resolving the flags creates nothing
    w = T.Writer(path, header=T.header(cfg.settings(), 1))
    w.write(1, [1], [0.5], 1e-5, 1e-3, 0.0)
    w.close()
    auto = _cfg(tmp_path, "--max_steps", "5", "--resume_from_checkpoint", "auto")
    assert auto.checkpoint.plan == resume.ResumePlan(trajectory=path)
    assert auto.checkpoint.resume_trajectory is None and auto.checkpoint.resume_from_checkpoint == "auto"
    with pytest.raises(BadInput, match="was written with --seed 42, this run has 1"):
        _cfg(tmp_path, "--max_steps", "5", "--resume_from_checkpoint", "auto", "--seed", "1")


def test_compatibility_reads_old_manifests():
    """Manifests before the one key list recorded master weights as "use_master"."""
    s = {"model_name": "m", "gguf_file": None, **{k: 0 for k in resume.MUST_MATCH}, "master_weights": True,
         "lr_scheduler_type": "constant"}
    old = {**{k: v for k, v in s.items() if k != "master_weights"}, "use_master": False}
    with pytest.raises(BadInput, match="--master_weights/--no_master_weights False"):
        resume.check_compatible("ckpt", old, s)
    resume.check_compatible("ckpt", {**old, "use_master": True}, s)


def test_resume_refuses_other_numerics_also_from_files_before_the_flag():
    """A checkpoint or trajectory written before --numerics existed ran reference (fp32 default,
    --no_master_weights) or master: resuming it with another numerics is refused."""
    s = {"model_name": "m", "gguf_file": None, **{k: 0 for k in resume.MUST_MATCH}, "numerics": "stochastic",
         "master_weights": False, "lr_scheduler_type": "constant"}
    old = {k: v for k, v in s.items() if k != "numerics"}
    with pytest.raises(BadInput, match="was written with --numerics 'reference', this run has 'stochastic'"):
        resume.check_compatible("ckpt", old, s)
    resume.check_compatible("ckpt", old, {**s, "numerics": "reference"})
    resume.check_compatible("ckpt", {**old, "master_weights": True}, {**s, "numerics": "master", "master_weights": True})


def test_every_flag_lands_in_run_config(tmp_path):
    dests = {a.dest for a in config.build_parser()._actions if a.dest not in ("help", "config")}
    assert dests <= set(_cfg(tmp_path).flags)


def test_num_dev_num_eval_defaults_help_and_readme_agree(tmp_path):
    """Unset --num_dev / --num_eval: the reference's sizes (large_models/mezo.sh: DEV 500, CB and
    Copa 100, EVAL 1000), except the offline default run on the bundled SST-2 sample (100 / 200);
    --help and the README's task section say so."""
    from helpers import ROOT, TEST_DATA
    d = _cfg(tmp_path).data  # no flags: the offline default run
    assert (d.num_train, d.num_dev, d.num_eval) == (1000, 100, 200)
    for task, dev in (("SST2", 500), ("RTE", 500), ("CB", 100), ("Copa", 100), ("SQuAD", 500)):
        d = _cfg(tmp_path, "--task_name", task, "--data_dir", TEST_DATA).data
        assert (d.num_train, d.num_dev, d.num_eval) == (1000, dev, 1000), task
    d = _cfg(tmp_path, "--num_dev", "7", "--num_eval", "9").data
    assert (d.num_dev, d.num_eval) == (7, 9)  # given flags win
    help_text = " ".join(config.build_parser().format_help().split())
    assert "--num_dev NUM_DEV dev examples drawn from train; unset: the reference's 500 (CB 100, Copa 100), " \
           "and 100 on the bundled SST-2 sample (the offline default run)" in help_text
    assert "--num_eval NUM_EVAL test examples from the validation split; unset: the reference's 1000, and 200 " \
           "on the bundled SST-2 sample (the offline default run)" in help_text
    readme = " ".join(open(os.path.join(ROOT, "README.md"), encoding="utf-8").read().split())
    assert "1000 train, 500 dev from train (100 for CB and Copa), test = up to 1000 from validation" in readme
    assert "on the bundled SST-2 sample (the offline default run) 100 dev and 200 test" in readme
    assert "It samples 1000 train / 100 dev / 200 test examples" in readme  # "The default run"


def test_a_folder_holding_a_run_is_refused_unless_continued_or_replaced(tmp_path):
    out = tmp_path / "out"
    _cfg(tmp_path)  # a new folder: fine, and nothing is created
    assert not out.exists()
    out.mkdir()
    (out / "notes.txt").write_text("x")
    _cfg(tmp_path)  # a folder without a run: fine
    (out / "training_metrics.json").write_text("{}")
    with pytest.raises(BadInput, match=r"--output_dir .*out holds a run \(training_metrics.json\): pass "
                                        r"--overwrite_output_dir .* or --resume_from_checkpoint auto"):
        _cfg(tmp_path)
    assert _cfg(tmp_path, "--overwrite_output_dir").output.overwrite
    assert _cfg(tmp_path, "--resume_from_checkpoint", "auto").checkpoint.plan.fresh
    with pytest.raises(BadInput, match="--overwrite_output_dir and --resume_from_checkpoint contradict"):
        _cfg(tmp_path, "--overwrite_output_dir", "--resume_from_checkpoint", "auto")
    other = tmp_path / "other.jsonl"
    other.write_text("x")
    with pytest.raises(BadInput, match="holds another run .* continuing --resume_trajectory .*other.jsonl"):
        _cfg(tmp_path, "--resume_trajectory", str(other))
    assert sorted(os.listdir(out)) == ["notes.txt", "training_metrics.json"]

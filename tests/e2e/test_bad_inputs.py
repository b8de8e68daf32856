"""Bad input, table-driven: data files, model folders, flags, the output folder, presets, the grid
runner, the analysis and replay, each tried as a new user would, on tiny models.

The rule every row checks (the README's "Bad input" contract):
  * the exit code: 2 for bad input, 3 for a run that diverged;
  * no traceback, and exactly one error line on stderr: the LAST non-empty line,
    `<script>: error: <message>`, and the message names the file (FILE or FILE:LINE) or the flag
    (`row.names`); lines before it (warnings, log lines, a progress bar) hold no other error;
  * nothing already on disk is modified: every file and folder under the test's folders (models,
    data, presets, earlier runs, the row's own folder) has the same bytes and mode after, and no
    path appears except the ones a row is allowed to create (a run that started and failed).

Most rows fail before any model loads, so they run in process (the entry points' main(argv));
a few run as subprocesses, as a user types them.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Callable

import pytest

from helpers import ROOT, TEST_DATA, build_model

FAST = ["--zo_backend", "eager", "--num_dev", "4", "--num_eval", "8", "--num_train", "16", "--batch_size", "4",
        "--max_steps", "2", "--eval_steps", "2", "--no_initial_eval"]
ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
SCRIPTS = {"train": "accelerate_mezo.py", "launch": "launch_experiment.py", "grid": "run_mezo_paper_experiments.py",
           "analyze": "analyze_mezo_results.py", "replay": "python -m mezo.replay"}


# ---------------------------------------------------------------------------------- the world
def _lines(path):
    return open(path, encoding="utf-8").read().splitlines()


def _data(root, name, task_dir="glue/sst2", train=None, validation=None, raw_train: bytes | None = None):
    """A copy of the real rows in tests/data/<task_dir>, its splits changed by `train` / `validation`."""
    d = os.path.join(root, "data", name)
    os.makedirs(os.path.join(d, task_dir))
    for split, change in (("train", train), ("validation", validation)):
        lines = _lines(os.path.join(TEST_DATA, task_dir, f"{split}.jsonl"))
        with open(os.path.join(d, task_dir, f"{split}.jsonl"), "wb") as f:
            if split == "train" and raw_train is not None:
                f.write(raw_train)
            else:
                f.write(("\n".join(change(lines) if change else lines) + "\n").encode())
    return d


def _set(lines, i, **kw):
    row = json.loads(lines[i])
    row.update(kw)
    return lines[:i] + [json.dumps(row)] + lines[i + 1:]


def _model_copy(root, tiny, name, change):
    d = os.path.join(root, "models", name)
    shutil.copytree(tiny, d)
    change(d)
    return d


def _write(path, text):
    with open(path, "w") as f:
        f.write(text)


@dataclass
class World:
    root: str
    tiny: str = ""
    other: str = ""
    data: dict = field(default_factory=dict)
    models: dict = field(default_factory=dict)
    run: str = ""           # a finished run (2 MeZO steps, checkpoints, trajectory)
    presets: str = ""
    grid: str = ""          # a grid output folder holding a run of other settings


def _train(argv):
    import torch
    from mezo import train
    grad = torch.is_grad_enabled()  # a run turns autograd off for the process: give the next test it back
    try:
        return train.main(argv)
    except SystemExit as e:
        return e.code
    finally:
        torch.set_grad_enabled(grad)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    os.environ.update(ENV)
    root = str(tmp_path_factory.mktemp("bad_inputs"))
    w = World(root)
    w.tiny = build_model(os.path.join(root, "tiny"))
    w.other = build_model(os.path.join(root, "other"), seed=1)  # same architecture, other weights
    w.data["ok"] = _data(root, "ok")
    raw = open(os.path.join(TEST_DATA, "glue/sst2/train.jsonl"), "rb").read().split(b"\n")
    w.data["truncated"] = _data(root, "truncated", train=lambda l: l[:30] + [l[30][:25]] + l[31:])
    w.data["not_utf8"] = _data(root, "not_utf8", raw_train=b"\n".join(raw[:5] + [raw[5].replace(b"e", b"\xff", 1)]
                                                                             + raw[6:]))
    w.data["unlabelled"] = _data(root, "unlabelled", validation=lambda l: [json.dumps({**json.loads(x), "label": -1})
                                                                           for x in l])
    w.data["label_5"] = _data(root, "label_5", train=lambda l: _set(l, 12, label=5))
    w.data["label_str"] = _data(root, "label_str", train=lambda l: _set(l, 12, label="positive"))
    w.data["renamed"] = _data(root, "renamed", train=lambda l: [
        json.dumps({("text" if k == "sentence" else k): v for k, v in json.loads(x).items()}) for x in l])
    w.data["empty_train"] = _data(root, "empty_train", train=lambda l: [])
    w.data["empty_eval"] = _data(root, "empty_eval", validation=lambda l: [])
    w.data["not_object"] = _data(root, "not_object", train=lambda l: l[:3] + ["[1, 2]"] + l[4:])
    w.data["no_label"] = _data(root, "no_label", train=lambda l: l[:7] + ['{"sentence": "a film"}'] + l[8:])
    w.data["copa_question"] = _data(root, "copa_question", "super_glue/copa",
                                    validation=lambda l: _set(l, 2, question="why"))

    def safetensors(cut):
        def change(d):
            data = open(os.path.join(d, "model.safetensors"), "rb").read()
            with open(os.path.join(d, "model.safetensors"), "wb") as f:
                f.write(data[: len(data) // 2] if cut else b"\xff" * 8 + data[8:])
        return change
    w.models["no_config"] = _model_copy(root, w.tiny, "no_config", lambda d: os.unlink(os.path.join(d, "config.json")))
    w.models["bad_json"] = _model_copy(root, w.tiny, "bad_json",
                                       lambda d: _write(os.path.join(d, "config.json"), '{"model_type": "llama",\n'))
    w.models["unknown_type"] = _model_copy(root, w.tiny, "unknown_type", lambda d: _write(
        os.path.join(d, "config.json"), open(os.path.join(d, "config.json")).read().replace('"llama"', '"llamax"')))
    w.models["no_tokenizer"] = _model_copy(root, w.tiny, "no_tokenizer", lambda d: [
        os.unlink(os.path.join(d, n)) for n in ("tokenizer.json", "tokenizer_config.json")])
    w.models["truncated"] = _model_copy(root, w.tiny, "truncated", safetensors(cut=True))
    w.models["corrupt"] = _model_copy(root, w.tiny, "corrupt", safetensors(cut=False))
    os.makedirs(os.path.join(root, "models", "empty"))
    w.models["empty"] = os.path.join(root, "models", "empty")

    w.run = os.path.join(root, "run")
    assert _train(["--model_name", w.tiny, "--data_dir", w.data["ok"], "--output_dir", w.run, "--save_steps", "1",
                   *FAST]) == 0

    w.presets = os.path.join(root, "presets")
    os.makedirs(w.presets)
    good = {"description": "tiny", "source": "test", "args": {
        "model_name": w.tiny, "data_dir": w.data["ok"], "output_dir": os.path.join(root, "preset_out"),
        **{a.lstrip("-"): b for a, b in zip(FAST[::2], FAST[1::2])}, "no_initial_eval": True}}
    import yaml
    _write(os.path.join(w.presets, "good.yaml"), yaml.safe_dump(good))
    _write(os.path.join(w.presets, "broken.yaml"), "description: x\nargs:\n  seed: [1, 2\n  max_steps: 3\n")
    _write(os.path.join(w.presets, "field.yaml"), "description: x\narg:\n  seed: 1\n")
    _write(os.path.join(w.presets, "nproc0.yaml"), "description: x\nnproc: 0\nargs:\n  seed: 1\n")
    _write(os.path.join(w.presets, "flag.yaml"), "description: x\nargs:\n  lerning_rate: 1e-4\n")

    # a finished run in the grid's folder for (SST2, mezo), its settings the grid's but for the learning rate
    from mezo import config
    from mezo.experiments import grids
    from mezo.experiments.command import flag_args
    w.grid = os.path.join(root, "grid")
    args = grids.with_output(grids.expand("opt", tasks=["SST2"], modes=["mezo"])[0], w.grid)
    other = args["output_dir"]
    os.makedirs(other)
    stored = {**vars(config.build_parser().parse_args(flag_args(args))), "learning_rate": 1e-6}
    _write(os.path.join(other, "run_config.json"), json.dumps(stored))
    _write(os.path.join(other, "training_metrics.json"), json.dumps({"status": "completed"}))
    os.makedirs(os.path.join(root, "empty_results"))
    return w


# ---------------------------------------------------------------------------------- the rows
@dataclass
class Row:
    id: str
    entry: str                                  # train | launch | grid | analyze | replay
    argv: Callable                              # (world, row folder) -> argv
    needle: str                                 # in the error line
    names: Callable                             # (world, row folder) -> the file or flag the line must name
    code: int = 2
    subprocess: bool = False
    creates: Callable | None = None             # (world, row folder) -> a path the row may create


def flag(name):
    return lambda w, t: name


def T(id, argv, needle, names, **kw):
    return Row(id, "train", argv, needle, names if callable(names) else flag(names), **kw)


def data_row(id, data, needle, file, extra=(), **kw):
    return T(id, lambda w, t: ["--model_name", w.tiny, "--data_dir", w.data[data], "--output_dir", f"{t}/out",
                               *FAST, *extra],
             needle, flag(file) if file.startswith("--") else lambda w, t: os.path.join(w.data[data], file), **kw)


def model_row(id, model, needle, file=""):
    return T(id, lambda w, t: ["--model_name", w.models[model], "--data_dir", w.data["ok"], "--output_dir",
                               f"{t}/out", *FAST],
             needle, lambda w, t: os.path.join(w.models[model], file) if file else f"--model_name {w.models[model]}")


def with_run(w, t, name="out"):
    """A copy of the finished run in the row's folder (its output_dir)."""
    shutil.copytree(w.run, os.path.join(t, name))
    return os.path.join(t, name)


def finished_only(w, t):
    """A completed run without checkpoints or trajectory (what a baseline or backprop run leaves)."""
    out = with_run(w, t)
    shutil.rmtree(os.path.join(out, "checkpoints"))
    os.unlink(os.path.join(out, "trajectory.jsonl"))
    return out


def trajectory_of_other_weights(w, t):
    """The run's trajectory as if the model folder it names had been replaced by other weights
    (a hub revision or a folder overwritten since): the header names w.other, the fingerprint is
    still w.tiny's."""
    lines = open(os.path.join(w.run, "trajectory.jsonl")).read().splitlines(keepends=True)
    lines[0] = json.dumps({**json.loads(lines[0]), "model_name": w.other}) + "\n"
    _write(os.path.join(t, "trajectory.jsonl"), "".join(lines))
    return os.path.join(t, "trajectory.jsonl")


def train_in(argv_tail, needle, names, id, **kw):
    return T(id, lambda w, t: ["--model_name", w.tiny, "--data_dir", w.data["ok"], "--output_dir", with_run(w, t),
                               *FAST, *argv_tail(w, t)], needle, names, **kw)


ROWS = [
    # ------------------------------------------------ results are never overwritten or mislabelled
    train_in(lambda w, t: [], "holds a run (run_config.json", "--overwrite_output_dir", "output_dir_holds_a_run"),
    train_in(lambda w, t: [], "holds a run", "--output_dir", "output_dir_holds_a_run_subprocess", subprocess=True),
    train_in(lambda w, t: ["--overwrite_output_dir", "--resume_from_checkpoint", "auto"], "contradict each other",
             "--overwrite_output_dir", "overwrite_and_resume"),
    train_in(lambda w, t: ["--resume_trajectory", os.path.join(w.run, "trajectory.jsonl")],
             "holds another run", "--resume_trajectory", "resume_another_run_into_a_run"),
    train_in(lambda w, t: ["--trainer", "ft", "--resume_from_checkpoint", "auto"], "cannot resume it",
             "--trainer ft", "ft_auto_resume_into_a_run"),
    T("ft_resume_from_checkpoint", lambda w, t: ["--model_name", w.tiny, "--trainer", "ft", "--output_dir",
                                                 f"{t}/out", "--resume_from_checkpoint",
                                                 os.path.join(w.run, "checkpoints", "step_2"), *FAST],
      "only MeZO runs resume", "--resume_from_checkpoint"),
    train_in(lambda w, t: ["--zero_shot"], "holds a run", "--output_dir", "zero_shot_into_a_run"),
    T("resume_trajectory_onto_other_base_weights",
      lambda w, t: ["--model_name", w.other, "--data_dir", w.data["ok"], "--output_dir", f"{t}/out",
                    "--resume_trajectory", trajectory_of_other_weights(w, t), *FAST],
      "a resumed run replays onto the same base weights", lambda w, t: f"{t}/trajectory.jsonl"),
    T("auto_into_a_finished_run_with_nothing_to_resume",
      lambda w, t: ["--model_name", w.tiny, "--data_dir", w.data["ok"], "--output_dir", finished_only(w, t),
                    "--resume_from_checkpoint", "auto", *FAST],
      "holds a completed run with no checkpoint or trajectory of these settings", "--resume_from_checkpoint auto"),
    T("diverged_run_exits_3", lambda w, t: ["--model_name", w.tiny, "--data_dir", w.data["ok"], "--output_dir",
                                            f"{t}/out", *FAST, "--max_steps", "12", "--eval_steps", "12",
                                            "--learning_rate", "1e9", "--skip_nonfinite", "--max_skipped_steps", "2"],
      "non-finite steps skipped (steps ", "--max_skipped_steps 2", code=3, creates=lambda w, t: f"{t}/out"),
    T("max_skipped_steps_negative", lambda w, t: ["--max_skipped_steps", "-1", "--output_dir", f"{t}/out"],
      "--max_skipped_steps must be >= 0", "--max_skipped_steps"),
    # ------------------------------------------------ bad data, named before the model loads
    data_row("data_truncated_line", "truncated", "not valid JSON", "glue/sst2/train.jsonl:31"),
    data_row("data_truncated_line_subprocess", "truncated", "a truncated or corrupt line",
             "glue/sst2/train.jsonl:31", subprocess=True),
    data_row("data_not_utf8", "not_utf8", "not UTF-8 (byte 0xff", "glue/sst2/train.jsonl:6"),
    data_row("data_label_minus_1", "unlabelled", "label -1 is not one of task SST2's labels: 0 (terrible), 1 (great)",
             "glue/sst2/validation.jsonl:1"),
    data_row("data_label_5", "label_5", "label 5 is not one of", "glue/sst2/train.jsonl:13"),
    data_row("data_label_string", "label_str", "label 'positive' is not one of", "glue/sst2/train.jsonl:13"),
    data_row("data_renamed_column", "renamed", "no column 'sentence' (the row has 'text', 'label', 'idx'",
             "glue/sst2/train.jsonl:1"),
    data_row("data_text_column_typo", "ok", "--text_column sentnce: no such column", "glue/sst2/validation.jsonl:1",
             extra=["--text_column", "sentnce"]),
    data_row("data_empty_train", "empty_train", "empty (no rows)", "glue/sst2/train.jsonl"),
    data_row("data_empty_eval", "empty_eval", "empty (no rows)", "glue/sst2/validation.jsonl"),
    data_row("data_not_an_object", "not_object", "one JSON object (a row) per line expected, got list",
             "glue/sst2/train.jsonl:4"),
    data_row("data_no_label", "no_label", "no column 'label'", "glue/sst2/train.jsonl:8"),
    data_row("data_copa_question", "copa_question", "question 'why' is neither 'cause' nor 'effect'",
             "super_glue/copa/validation.jsonl:3", extra=["--task_name", "Copa"]),
    data_row("num_dev_takes_every_row", "ok", "leaves nothing to train on", "--num_dev", extra=["--num_dev", "40"]),
    data_row("max_length_below_scaffold", "ok", "is shorter than task SST2's prompt scaffold", "--max_length",
             extra=["--max_length", "3"]),
    T("offline_without_data_dir", lambda w, t: ["--model_name", w.tiny, "--task_name", "RTE", "--output_dir",
                                                f"{t}/out", *FAST],
      "cannot read super_glue/rte (validation) from the Hugging Face hub", "--data_dir", subprocess=True),
    # ------------------------------------------------ bad model folders, before heavy work
    model_row("model_no_config", "no_config", "no config.json"),
    model_row("model_invalid_config_json", "bad_json", "not valid JSON", "config.json:2"),
    model_row("model_unknown_model_type", "unknown_type", "model_type 'llamax' is not one transformers", "config.json"),
    model_row("model_no_tokenizer", "no_tokenizer", "no tokenizer files"),
    model_row("model_truncated_safetensors", "truncated", "truncated or corrupt", "model.safetensors"),
    model_row("model_corrupt_safetensors_header", "corrupt", "not a safetensors file", "model.safetensors"),
    model_row("model_empty_folder", "empty", "empty folder"),
    T("lora_targets_match_nothing", lambda w, t: ["--model_name", w.tiny, "--data_dir", w.data["ok"], "--output_dir",
                                                  f"{t}/out", "--use_lora", "--lora_target_modules", "q_proj,vproj",
                                                  *FAST],
      "matches no module of this LlamaForCausalLM; its linear layers: v_proj", "--lora_target_modules 'vproj'"),
    T("preset_broken_yaml", lambda w, t: ["--config", os.path.join(w.presets, "broken.yaml")],
      "invalid YAML", lambda w, t: os.path.join(w.presets, "broken.yaml") + ":4"),
    # ------------------------------------------------ launch_experiment.py
    Row("launch_unknown_preset", "launch", lambda w, t: ["--config", "nope", "--config_dir", w.presets, "--dry_run"],
        "unknown preset 'nope'", flag("nope")),
    Row("launch_unknown_preset_subprocess", "launch", lambda w, t: ["--config", "quick_tset", "--dry_run"],
        "did you mean: quick_test", flag("quick_tset"), subprocess=True),
    Row("launch_broken_yaml", "launch", lambda w, t: ["--config", "broken", "--config_dir", w.presets, "--dry_run"],
        "invalid YAML: expected ',' or ']'", lambda w, t: "broken.yaml:4"),
    Row("launch_unknown_field", "launch", lambda w, t: ["--config", "field", "--config_dir", w.presets, "--dry_run"],
        "unknown field 'arg'", lambda w, t: "field.yaml"),
    Row("launch_unknown_flag_in_preset", "launch", lambda w, t: ["--config", "flag", "--config_dir", w.presets,
                                                                 "--dry_run"],
        "unknown flag 'lerning_rate' in args", lambda w, t: "flag.yaml"),
    Row("launch_preset_nproc_0", "launch", lambda w, t: ["--config", "nproc0", "--config_dir", w.presets, "--dry_run"],
        "nproc must be a number of processes >= 1", lambda w, t: "nproc0.yaml"),
    Row("launch_override_without_equals", "launch",
        lambda w, t: ["--config", "good", "--config_dir", w.presets, "--override", "learning_rate", "--dry_run"],
        "--override expects key=value", flag("learning_rate")),
    Row("launch_override_unknown_key", "launch",
        lambda w, t: ["--config", "good", "--config_dir", w.presets, "--override", "lerning_rate=1e-4", "--dry_run"],
        "has no flag --lerning_rate (did you mean: learning_rate)", flag("--override lerning_rate=1e-4")),
    Row("launch_override_bad_value", "launch",
        lambda w, t: ["--config", "good", "--config_dir", w.presets, "--override", "learning_rate=abc", "--dry_run"],
        "invalid float value: 'abc'", flag("--override learning_rate=abc")),
    Row("launch_override_refused_by_the_rules", "launch",
        lambda w, t: ["--config", "good", "--config_dir", w.presets, "--override", "zo_eps=0", "--dry_run"],
        "--zo_eps must be > 0", flag("--override zo_eps=0")),
    Row("launch_nproc_0", "launch", lambda w, t: ["--config", "good", "--config_dir", w.presets, "--nproc", "0",
                                                  "--dry_run"],
        "--nproc must be >= 1 (got 0)", flag("--nproc")),
    Row("launch_batch_not_divisible", "launch", lambda w, t: ["--config", "good", "--config_dir", w.presets,
                                                              "--nproc", "3", "--dry_run"],
        "is not divisible by the number of processes (3)", flag("--batch_size")),
    # ------------------------------------------------ run_mezo_paper_experiments.py
    Row("grid_unknown_task", "grid", lambda w, t: ["--model_family", "opt", "--tasks", "SST3", "--output_dir",
                                                   f"{t}/g", "--create_slurm", "--slurm_partition", "p"],
        "not in the opt grid (valid: SST2, RTE", flag("--tasks SST3")),
    Row("grid_unknown_task_subprocess", "grid", lambda w, t: ["--model_family", "opt", "--tasks", "SST3",
                                                              "--output_dir", f"{t}/g", "--dry_run"],
        "not in the opt grid", flag("--tasks SST3"), subprocess=True),
    Row("grid_unknown_mode", "grid", lambda w, t: ["--model_family", "opt", "--modes", "mezo,mezo_lorra",
                                                   "--output_dir", f"{t}/g", "--create_slurm", "--slurm_partition", "p"],
        "not in the opt grid", flag("--modes mezo_lorra")),
    Row("grid_unknown_k", "grid", lambda w, t: ["--model_family", "roberta", "--ks", "8", "--output_dir", f"{t}/g",
                                                "--create_slurm", "--slurm_partition", "p"],
        "(valid: 16, 512)", flag("--ks 8")),
    Row("grid_unknown_seed", "grid", lambda w, t: ["--model_family", "roberta", "--seeds", "7", "--output_dir",
                                                   f"{t}/g", "--create_slurm", "--slurm_partition", "p"],
        "(valid: 13, 21, 42, 87, 100)", flag("--seeds 7")),
    Row("grid_seed_not_a_number", "grid", lambda w, t: ["--model_family", "opt", "--seeds", "x", "--output_dir",
                                                        f"{t}/g", "--dry_run"],
        "a comma-separated list of ints", flag("--seeds x")),
    Row("grid_unknown_extra_key", "grid", lambda w, t: ["--model_family", "opt", "--extra", "lerning_rate=1",
                                                        "--output_dir", f"{t}/g", "--create_slurm",
                                                        "--slurm_partition", "p"],
        "accelerate_mezo.py has no flag --lerning_rate", flag("--extra lerning_rate=1")),
    Row("grid_extra_without_equals", "grid", lambda w, t: ["--model_family", "opt", "--extra", "data_dir",
                                                           "--output_dir", f"{t}/g", "--dry_run"],
        "expected KEY=VALUE", flag("--extra data_dir")),
    Row("grid_extra_bad_value", "grid", lambda w, t: ["--model_family", "opt", "--tasks", "SST2", "--extra",
                                                      "max_steps=abc", "--output_dir", f"{t}/g", "--create_slurm",
                                                      "--slurm_partition", "p"],
        "invalid int value: 'abc'", flag("--extra max_steps")),
    Row("grid_slurm_without_partition", "grid", lambda w, t: ["--model_family", "opt", "--output_dir", f"{t}/g",
                                                              "--create_slurm"],
        "--create_slurm needs --slurm_partition", flag("--slurm_partition")),
    Row("grid_folder_of_other_settings", "grid", lambda w, t: ["--model_family", "opt", "--tasks", "SST2", "--modes",
                                                               "mezo", "--output_dir", w.grid, "--create_slurm",
                                                               "--slurm_partition", "p"],
        "holds a run with --learning_rate 1e-06, the grid's run opt-SST2-mezo-lr1e-7_eps1e-3_seed0 has 1e-07",
        lambda w, t: os.path.join(w.grid, "opt", "SST2", "mezo", "lr1e-7_eps1e-3_seed0")),
    # ------------------------------------------------ analyze_mezo_results.py
    Row("analyze_missing_results_dir", "analyze", lambda w, t: ["--results_dir", f"{t}/nope", "--output_dir",
                                                                f"{t}/a"],
        "no such directory", lambda w, t: f"--results_dir {t}/nope"),
    Row("analyze_empty_results_dir", "analyze", lambda w, t: ["--results_dir", f"{w.root}/empty_results",
                                                              "--output_dir", f"{t}/a"],
        "no run folders under it", lambda w, t: "--results_dir"),
    # ------------------------------------------------ replay
    Row("replay_onto_another_base", "replay", lambda w, t: ["--base", w.other, "--trajectory",
                                                            os.path.join(w.run, "trajectory.jsonl"), "--output",
                                                            f"{t}/rep"],
        "not the model the trajectory was trained from", lambda w, t: f"--base {w.other}"),
    Row("replay_into_a_non_empty_output", "replay", lambda w, t: ["--base", w.tiny, "--trajectory",
                                                                  os.path.join(w.run, "trajectory.jsonl"), "--output",
                                                                  w.run],
        "not empty", lambda w, t: f"--output {w.run}", subprocess=True),
]


# ---------------------------------------------------------------------------------- the check
def snapshot(roots) -> dict:
    """path -> (kind, mode, sha256 of the bytes) of everything under `roots`."""
    out = {}
    for root in roots:
        for d, dirs, files in os.walk(root):
            out[d] = ("dir", os.stat(d).st_mode, None)
            for f in files:
                p = os.path.join(d, f)
                with open(p, "rb") as fh:
                    out[p] = ("file", os.stat(p).st_mode, hashlib.sha256(fh.read()).hexdigest())
    return out


def _in_process(entry, argv, capsys):
    if entry == "train":
        from mezo.train import main
    elif entry == "launch":
        from launch_experiment import main
    elif entry == "grid":
        from run_mezo_paper_experiments import main
    elif entry == "analyze":
        from analyze_mezo_results import main
    else:
        from mezo.replay import main
    import torch
    grad = torch.is_grad_enabled()  # a run turns autograd off for the process: give the next test it back
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    finally:
        torch.set_grad_enabled(grad)
    return code, capsys.readouterr().err


def _subprocess(entry, argv):
    cmd = [sys.executable, "-m", "mezo.replay"] if entry == "replay" else [sys.executable, SCRIPTS[entry]]
    r = subprocess.run(cmd + argv, capture_output=True, text=True, cwd=ROOT, timeout=600, env={**os.environ, **ENV})
    return r.returncode, r.stderr


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_bad_input(world, row, tmp_path, capsys):
    t = str(tmp_path)
    argv = row.argv(world, t)
    roots = [world.root, t]
    before = snapshot(roots)
    code, err = _subprocess(row.entry, argv) if row.subprocess else _in_process(row.entry, argv, capsys)
    after = snapshot(roots)

    lines = [line for line in err.splitlines() if line.strip()]
    assert code == row.code, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    prog = SCRIPTS[row.entry]
    assert lines and lines[-1].startswith(f"{prog}: error: "), err[-3000:]
    assert sum(": error: " in line for line in lines) == 1, err[-3000:]
    assert row.needle in lines[-1], lines[-1]
    assert row.names(world, t) in lines[-1], lines[-1]

    changed = sorted(p for p in before if after.get(p) != before[p])
    allowed = row.creates(world, t) if row.creates else None
    added = sorted(p for p in after if p not in before and not (allowed and (p == allowed or
                                                                          p.startswith(allowed + os.sep))))
    assert not changed and not added, (changed, added)


def test_the_table_covers_forty_bad_inputs():
    assert len(ROWS) >= 40 and len({r.id for r in ROWS}) == len(ROWS)
    assert sum(r.subprocess for r in ROWS) >= 5

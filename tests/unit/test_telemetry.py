"""mezo/telemetry.py: strict JSON, file modes under the umask, the output-folder rule's helpers."""
import json
import math
import os
import stat

import pytest

from mezo import telemetry
from mezo.errors import BadInput


def _refuse(token):
    raise ValueError(f"not strict JSON: {token}")


def strict_load(path):
    """A parser that refuses NaN / Infinity, as strict JSON readers (jq, JavaScript, Go) do."""
    with open(path) as f:
        return json.load(f, parse_constant=_refuse)


def test_non_finite_values_become_null_with_the_reason(tmp_path):
    path = tmp_path / "m.json"
    telemetry.write_json(str(path), {"steps": [{"step": 1, "loss": math.nan, "g": [1.5, math.inf], "lr": 1e-5}],
                                     "final": {"test": {"accuracy": -math.inf}}, "ok": 0.5})
    data = strict_load(path)
    assert data["steps"][0] == {"step": 1, "loss": None, "g": [1.5, None], "lr": 1e-5,
                                "nonfinite": {"loss": "nan", "g": [None, "inf"]}}
    assert data["final"]["test"] == {"accuracy": None, "nonfinite": {"accuracy": "-inf"}}
    assert data["ok"] == 0.5


def test_metrics_file_is_strict_json(tmp_path):
    m = telemetry.Metrics(str(tmp_path / "training_metrics.json"))
    m.step({"step": 1, "loss": math.nan, "loss_plus": math.nan, "loss_minus": 1.0, "projected_grad": math.nan,
            "step_time_s": 0.1})
    m.save("failed")
    data = strict_load(tmp_path / "training_metrics.json")
    assert data["status"] == "failed" and data["steps"][0]["loss"] is None
    assert data["steps"][0]["nonfinite"] == {"loss": "nan", "loss_plus": "nan", "projected_grad": "nan"}


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_json_files_get_the_mode_of_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        telemetry.write_json(str(tmp_path / "a.json"), {"x": 1})
        (tmp_path / "d").mkdir()
        (tmp_path / "d" / "w.safetensors").write_bytes(b"x")
        os.chmod(tmp_path / "d" / "w.safetensors", 0o600)  # as safetensors creates it
        telemetry.apply_umask(str(tmp_path / "d"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "a.json").st_mode) == 0o666 & ~mask
    assert stat.S_IMODE(os.stat(tmp_path / "d" / "w.safetensors").st_mode) == 0o666 & ~mask
    assert stat.S_IMODE(os.stat(tmp_path / "d").st_mode) == 0o777 & ~mask


def test_check_writable_creates_nothing(tmp_path):
    telemetry.check_writable("--output_dir", str(tmp_path / "a" / "b"))
    assert not (tmp_path / "a").exists()
    (tmp_path / "f").write_text("x")
    with pytest.raises(BadInput, match=r"--output_dir .*/f/sub: not writable \(Not a directory\)"):
        telemetry.check_writable("--output_dir", str(tmp_path / "f" / "sub"))
    assert os.listdir(tmp_path) == ["f"]


def test_run_files_and_clear_run_keep_foreign_files(tmp_path):
    assert telemetry.run_files(str(tmp_path / "none")) == []
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "slurm-1.out").write_text("job log")
    assert telemetry.run_files(str(tmp_path)) == []
    for name in ("run_config.json", "trajectory.jsonl", "adapter_config.json", "README.md", ".tmp-x.part"):
        (tmp_path / name).write_text("{}")
    (tmp_path / "checkpoints" / "step_2").mkdir(parents=True)
    assert telemetry.run_files(str(tmp_path)) == ["run_config.json", "trajectory.jsonl", "checkpoints",
                                                  "adapter_config.json"]
    telemetry.clear_run(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["notes.txt", "slurm-1.out"]


def test_trajectory_of_a_skipped_step_is_strict_and_reads_back(tmp_path):
    from mezo import trajectory as T
    s = dict(seed=1, zo_num_samples=1, zo_eps=1e-3, weight_decay=0.0, learning_rate=1e-3,
             lr_scheduler_type="constant", max_steps=3)
    w = T.Writer(str(tmp_path / "t.jsonl"), header=T.header(s, 1))
    w.write(1, [5], [0.25], 1e-3, 1e-3, 0.0)
    w.write(2, [6], [math.nan], 1e-3, 1e-3, 0.0, skipped=True)
    w.close()
    lines = (tmp_path / "t.jsonl").read_text().splitlines()
    rec = json.loads(lines[2], parse_constant=_refuse)
    assert rec["g"] == [None] and rec["skipped"] is True
    _, entries, _, _ = T.read(str(tmp_path / "t.jsonl"))
    assert entries[1].skipped and math.isnan(entries[1].grads[0]) and entries[0].grads == [0.25]
    # files written before strict JSON hold NaN: still read
    (tmp_path / "old.jsonl").write_text("\n".join(lines[:2] + [lines[2].replace("null", "NaN")]) + "\n")
    assert math.isnan(T.read(str(tmp_path / "old.jsonl"))[1][1].grads[0])

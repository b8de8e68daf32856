"""--zo_method block and fzoo end to end (accelerate_mezo.py on a tiny Llama): 1 and 2 ranks
(torchrun, gloo, FSDP2) give the same trajectory and weights, `mezo.replay` rebuilds the saved
weights bit for bit from the trajectory, a run resumed from its step-3 checkpoint continues it
exactly, LoRA and prefix tuning run and resume, and bad input exits 2 with one line."""
import glob
import json
import os

import pytest
import torch
from safetensors.torch import load_file

from helpers import build_model, run_script
from test_checkpoint import assert_same_weights, one_line_error, replay

FAST = ["--zo_backend", "eager", "--num_dev", "4", "--num_eval", "8", "--num_train", "32", "--batch_size", "4",
        "--no_initial_eval", "--learning_rate", "1e-2", "--weight_decay", "0.1", "--eval_steps", "3",
        "--max_steps", "6", "--save_steps", "3", "--save_model"]
METHODS = {
    "block": ["--zo_method", "block", "--zo_blocks", "1"],
    "fzoo": ["--zo_method", "fzoo", "--zo_num_samples", "3", "--learning_rate", "1e-3"],
    # in place: replay must repeat the perturbation sweeps of each method (mezo.methods.replay_moves)
    "block_reference": ["--zo_method", "block", "--zo_blocks", "2", "--numerics", "reference"],
    "fzoo_reference": ["--zo_method", "fzoo", "--zo_num_samples", "2", "--numerics", "reference",
                       "--learning_rate", "1e-3"],
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_model(str(tmp_path_factory.mktemp("tiny_methods_e2e")), layers=3)


def train(tiny, out, extra, nproc=1):
    r = run_script(["--model_name", tiny, "--output_dir", str(out), *FAST, *extra], nproc=nproc)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def steps(out):
    rows = json.load(open(os.path.join(out, "training_metrics.json")))["steps"]
    return [{k: v for k, v in s.items() if not k.startswith(("step_time", "time_"))} for s in rows]


def saved(out):
    """The weights a run saved (paths relative to its folder): the full model under model/ with
    --save_model, LoRA's adapters beside the logs."""
    found = glob.glob(os.path.join(out, "*.safetensors")) + glob.glob(os.path.join(out, "model", "*.safetensors"))
    return sorted(os.path.relpath(p, out) for p in found)


def same_saved(a, b):
    fa = saved(a)
    assert fa and fa == saved(b)
    for f in fa:
        wa, wb = load_file(os.path.join(a, f)), load_file(os.path.join(b, f))
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), f


def body(out):
    """The trajectory's step lines (the header differs in world_size only)."""
    return (out / "trajectory.jsonl").read_text().splitlines()[1:]


@pytest.mark.parametrize("name", list(METHODS))
def test_replay_and_resume_are_exact(tiny, tmp_path, name):
    extra = METHODS[name]
    ref = tmp_path / "ref"
    train(tiny, ref, extra)
    header = json.loads((ref / "trajectory.jsonl").read_text().splitlines()[0])
    assert header["zo_method"] == extra[1]
    lines = [json.loads(x) for x in body(ref)]
    assert len(lines) == 6 and all(len(x["g"]) == (int(extra[3]) if "fzoo" in name else 1) for x in lines)
    if "block" in name:  # the recorded blocks: a pure function of the seed, not all of them
        rec = steps(ref)
        assert all(len(s["blocks"]) == int(extra[3]) for s in rec) and len({tuple(s["blocks"]) for s in rec}) > 1
    r = replay(tiny, ref / "trajectory.jsonl", tmp_path / "replayed")
    assert r.returncode == 0, r.stderr[-2000:]
    assert_same_weights(tmp_path / "replayed", ref / "model")
    res = tmp_path / "resumed"
    r = train(tiny, res, extra + ["--resume_from_checkpoint", str(ref / "checkpoints" / "step_3")])
    assert "resumed from" in r.stderr
    assert steps(res)[3:] == steps(ref)[3:]
    assert_same_weights(res / "model", ref / "model")
    assert (res / "trajectory.jsonl").read_text() == (ref / "trajectory.jsonl").read_text()


@pytest.mark.parametrize("name,mode", [("block", []), ("fzoo", []), ("block", ["--use_lora"])],
                         ids=["block", "fzoo", "block_lora"])
def test_one_and_two_ranks_are_identical(tiny, tmp_path, name, mode):
    extra = METHODS[name] + mode
    one, two = tmp_path / "one", tmp_path / "two"
    train(tiny, one, extra)
    train(tiny, two, extra, nproc=2)
    assert steps(one) == steps(two)
    assert body(one) == body(two)
    same_saved(str(one), str(two))


def test_prefix_tuning_resumes_exactly(tiny, tmp_path):
    """Prefix tuning (numerics reference: its prefixes are read by their parent) with fzoo: the
    per-layer prefixes are blocks too, but one unperturbed and N one-sided forwards is the case
    where the in-place sweeps differ most from MeZO's."""
    extra = METHODS["fzoo"] + ["--prefix_tuning", "--zo_eps", "1e-1"]
    ref, res = tmp_path / "ref", tmp_path / "res"
    train(tiny, ref, extra)
    train(tiny, res, extra + ["--resume_from_checkpoint", str(ref / "checkpoints" / "step_3")])
    assert steps(res)[3:] == steps(ref)[3:]
    assert body(res) == body(ref)


def test_bad_method_input_exits_2_with_one_line(tiny, tmp_path):
    r = run_script(["--model_name", tiny, "--output_dir", str(tmp_path / "a"), *FAST, "--zo_method", "block",
                    "--zo_blocks", "9"])
    # found once the model is loaded (its blocks): the load's log lines come first, then one error line
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert r.returncode == 2 and "Traceback" not in r.stderr and sum(": error: " in x for x in lines) == 1
    assert lines[-1].startswith("accelerate_mezo.py: error: --zo_blocks 9: the trainable parameters form only 4 "
                                "blocks"), r.stderr[-2000:]
    r = run_script(["--model_name", tiny, "--output_dir", str(tmp_path / "b"), *FAST, "--zo_method", "fzoo",
                    "--zo_num_samples", "1"])
    one_line_error(r, "--zo_num_samples >= 2")
    # a run of one method does not resume as another
    ref = tmp_path / "ref"
    train(tiny, ref, METHODS["block"])
    r = run_script(["--model_name", tiny, "--output_dir", str(tmp_path / "c"), *FAST, *METHODS["fzoo"],
                    "--resume_from_checkpoint", str(ref / "checkpoints" / "step_3")])
    one_line_error(r, "--zo_method 'block', this run has 'fzoo'")

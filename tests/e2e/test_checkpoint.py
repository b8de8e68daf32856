"""Checkpoints, exact resume (1 and 2 ranks, across world sizes), preemption, the trajectory and
bit-exact replay, non-finite steps, kill-safety of the JSON outputs, and bad input."""
import glob
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from helpers import ROOT, build_model, run_script

FAST = ["--zo_backend", "eager", "--num_dev", "4", "--num_eval", "8", "--num_train", "32", "--batch_size", "4",
        "--no_initial_eval", "--learning_rate", "1e-2", "--weight_decay", "0.1", "--eval_steps", "3"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_model(str(tmp_path_factory.mktemp("tiny_llama")))


def train(tiny, out, nproc=1, steps=6, extra=(), env=None, ok=True):
    r = run_script(["--model_name", tiny, "--max_steps", str(steps), "--output_dir", str(out), "--save_model",
                    *FAST, *extra], nproc=nproc, env=env)
    if ok:
        assert r.returncode == 0, r.stderr[-3000:]
    return r


def losses(out):
    """(step, L+, L-) of the steps computed (records of steps rebuilt from a trajectory have no losses)."""
    steps = json.load(open(os.path.join(out, "training_metrics.json")))["steps"]
    return [(s["step"], s["loss_plus"], s["loss_minus"]) for s in steps if not s.get("replayed")]


def weights(path):
    return load_file(os.path.join(str(path), "model.safetensors"))


def assert_same_weights(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def replay(tiny, traj, out, extra=()):
    return subprocess.run([sys.executable, "-m", "mezo.replay", "--base", tiny, "--trajectory", str(traj),
                           "--output", str(out), *extra], capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env=dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1"))


def one_line_error(r, needle, code=2):
    assert r.returncode == code, (r.returncode, r.stderr[-2000:])
    lines = [line for line in r.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], r.stderr[-2000:]


@pytest.fixture(scope="module")
def ref1(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref1") / "run"
    train(tiny, out, extra=["--save_steps", "3"])
    return out


@pytest.fixture(scope="module")
def ref2(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref2") / "run"
    train(tiny, out, nproc=2, extra=["--save_steps", "3"])
    return out


def test_checkpoint_layout(ref1):
    ck = ref1 / "checkpoints"
    assert sorted(os.listdir(ck)) == ["step_3", "step_6"]
    m = json.load(open(ck / "step_3" / "manifest.json"))
    assert m["complete"] and m["step"] == 3 and m["world_size"] == 1 and m["seed"] == 42
    st = json.load(open(ck / "step_3" / "state.json"))
    assert st["data_position"]["step"] == 3 and st["scheduler"]["type"] == "constant"
    from mezo.schedule import step_seed
    assert st["rng"]["seed"] == 42 and st["rng"]["next_seeds"] == [step_seed(42, 3)] and st["rng"]["torch_cpu_state"]
    assert len(st["metrics"]["steps"]) == 3 and st["metrics"]["evals"][0]["step"] == 3
    assert os.path.exists(ck / "step_3" / ".metadata")
    lines = (ref1 / "trajectory.jsonl").read_text().splitlines()
    assert len(lines) == 7 and json.loads(lines[0])["format"] == "mezo-trajectory"
    rec = json.loads(lines[3])
    assert rec["step"] == 3 and rec["n"] == 1 and rec["eps"] == 1e-3 and rec["wd"] == 0.1 and len(rec["g"]) == 1


@pytest.mark.parametrize("nproc", [1, 2])
def test_resume_is_exact(tiny, ref1, ref2, tmp_path, nproc):
    ref = ref1 if nproc == 1 else ref2
    out = tmp_path / "resumed"
    r = train(tiny, out, nproc=nproc, extra=["--resume_from_checkpoint", str(ref / "checkpoints" / "step_3")])
    assert "resumed from" in r.stderr
    assert losses(out) == losses(ref)
    assert_same_weights(out / "model", ref / "model")
    m = json.load(open(out / "training_metrics.json"))
    assert m["status"] == "completed" and [e["step"] for e in m["evals"]] == [3, 6]
    assert (out / "trajectory.jsonl").read_text() == (ref / "trajectory.jsonl").read_text()


def test_replay_is_bit_identical_json_and_binary(tiny, ref1, ref2, tmp_path):
    for ref in (ref1, ref2):  # trained on 1 and on 2 ranks, replayed on one process
        r = replay(tiny, ref / "trajectory.jsonl", tmp_path / f"replayed_{ref.parent.name}")
        assert r.returncode == 0, r.stderr[-2000:]
        assert_same_weights(tmp_path / f"replayed_{ref.parent.name}", ref / "model")
    b = subprocess.run([sys.executable, "-m", "mezo.trajectory", "compact", str(ref1 / "trajectory.jsonl"),
                        str(tmp_path / "t.bin")], capture_output=True, text=True, cwd=ROOT)
    assert b.returncode == 0, b.stderr
    assert os.path.getsize(tmp_path / "t.bin") < os.path.getsize(ref1 / "trajectory.jsonl")
    r = replay(tiny, tmp_path / "t.bin", tmp_path / "replayed_bin")
    assert r.returncode == 0, r.stderr[-2000:]
    assert_same_weights(tmp_path / "replayed_bin", ref1 / "model")


def test_resume_on_other_world_size(tiny, ref2, tmp_path):
    """A 2-rank checkpoint resumes on 1 rank (DCP reshards) and continues the 2-rank run exactly;
    it equals resuming from base + trajectory (whose last line is cut off, as after a crash mid-write) bit for bit."""
    out_ck, out_tr = tmp_path / "from_ckpt", tmp_path / "from_traj"
    train(tiny, out_ck, extra=["--resume_from_checkpoint", str(ref2 / "checkpoints" / "step_3")])
    lines = (ref2 / "trajectory.jsonl").read_text().splitlines(keepends=True)
    traj = tmp_path / "partial.jsonl"
    traj.write_text("".join(lines[:4]) + lines[4][:20])  # header + steps 1..3 + a truncated step 4
    r = train(tiny, out_tr, extra=["--resume_trajectory", str(traj)])
    assert "truncated" in r.stderr
    assert losses(out_ck)[3:] == losses(out_tr)  # the trajectory holds no losses: steps 4.. only
    rebuilt = json.load(open(out_tr / "training_metrics.json"))["steps"][:3]
    assert [(s["step"], s["replayed"]) for s in rebuilt] == [(1, True), (2, True), (3, True)]
    assert losses(out_ck)[:3] == losses(ref2)[:3]  # restored from the checkpoint's metrics
    assert_same_weights(out_ck / "model", out_tr / "model")
    # the same forwards on 1 and 2 ranks (mezo.batches): the resumed run continues the 2-rank
    # run bit for bit
    assert losses(out_ck)[3:] == losses(ref2)[3:]


def test_master_weights_resume_and_replay(tiny, tmp_path):
    ref, out = tmp_path / "ref", tmp_path / "resumed"
    train(tiny, ref, extra=["--master_weights", "--save_steps", "2"], steps=4)
    train(tiny, out, extra=["--master_weights", "--resume_from_checkpoint", str(ref / "checkpoints" / "step_2")], steps=4)
    assert losses(out) == losses(ref)
    assert_same_weights(out / "model", ref / "model")
    r = replay(tiny, ref / "trajectory.jsonl", tmp_path / "replayed")
    assert r.returncode == 0, r.stderr[-2000:]
    assert_same_weights(tmp_path / "replayed", ref / "model")


def _start(tiny, out, nproc=1, steps=12, extra=()):
    script = os.path.join(ROOT, "accelerate_mezo.py")
    args = ["--model_name", tiny, "--max_steps", str(steps), "--output_dir", str(out), "--save_model", *FAST, *extra]
    cmd = [sys.executable, script, *args] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
        str(29500 + (os.getpid() + 7) % 1000), script, *args]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env,
                            start_new_session=True)


def _wait_steps(out, n, proc, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout and proc.poll() is None:
        p = out / "trajectory.jsonl"
        if p.exists() and len(p.read_text().splitlines()) > n:
            return
        time.sleep(0.05)
    raise AssertionError("run did not reach step %d" % n)


def test_sigterm_checkpoints_exits_75_and_resumes_exactly(tiny, tmp_path):
    from mezo.errors import EXIT_PREEMPTED
    ref, out = tmp_path / "ref", tmp_path / "pre"
    p = _start(tiny, out)
    _wait_steps(out, 2, p)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == EXIT_PREEMPTED == 75, err[-2000:]
    m = json.load(open(out / "training_metrics.json"))
    assert m["status"] == "preempted" and m["preempted"]["signal"] == "SIGTERM"
    k = m["preempted"]["step"]
    assert 2 <= k < 12 and os.path.exists(out / "checkpoints" / f"step_{k}" / "manifest.json")
    train(tiny, out, steps=12, extra=["--resume_from_checkpoint", "auto"])
    train(tiny, ref, steps=12)
    assert losses(out) == losses(ref)
    assert_same_weights(out / "model", ref / "model")


def test_sigusr1_on_one_rank_stops_all_ranks(tiny, tmp_path):
    out = tmp_path / "pre2"
    p = _start(tiny, out, nproc=2, steps=40)
    _wait_steps(out, 1, p)
    import psutil
    workers = [c for c in psutil.Process(p.pid).children(recursive=True) if "accelerate_mezo" in " ".join(c.cmdline())]
    assert len(workers) == 2
    workers[-1].send_signal(signal.SIGUSR1)  # one rank only: the all-reduce makes both stop
    _, err = p.communicate(timeout=180)
    assert p.returncode != 0 and "exitcode" in err and "75" in err, err[-3000:]
    m = json.load(open(out / "training_metrics.json"))
    assert m["status"] == "preempted"
    k = m["preempted"]["step"]
    ck = json.load(open(out / "checkpoints" / f"step_{k}" / "manifest.json"))
    assert ck["world_size"] == 2 and k < 40


def test_nonfinite_stops_or_skips(tiny, tmp_path):
    env = {"MEZO_FAULT_NONFINITE_STEPS": "4"}
    out = tmp_path / "fail"
    r = train(tiny, out, steps=5, extra=["--save_steps", "2"], env=env, ok=False)
    assert r.returncode == 3
    last = [line for line in r.stderr.splitlines() if line.strip()][-1]
    assert "step 4" in last and "non-finite" in last and "checkpoints/step_2" in last, r.stderr[-2000:]
    assert json.load(open(out / "training_metrics.json"))["status"] == "failed"

    out = tmp_path / "skip"
    train(tiny, out, steps=5, extra=["--skip_nonfinite"], env=env)
    m = json.load(open(out / "training_metrics.json"))
    assert m["status"] == "completed" and m["skipped_nonfinite"] == 1
    assert [s.get("skipped_nonfinite", False) for s in m["steps"]] == [False, False, False, True, False]
    assert json.loads((out / "trajectory.jsonl").read_text().splitlines()[4])["skipped"] is True
    r = replay(tiny, out / "trajectory.jsonl", tmp_path / "replayed")
    assert r.returncode == 0, r.stderr[-2000:]
    assert_same_weights(tmp_path / "replayed", out / "model")

    # more skipped steps than --max_skipped_steps: the run diverged, it stops as failed and says which
    out = tmp_path / "diverged"
    r = train(tiny, out, steps=6, extra=["--skip_nonfinite", "--max_skipped_steps", "2"], ok=False,
              env={"MEZO_FAULT_NONFINITE_STEPS": "1,2,4,5"})
    assert r.returncode == 3
    last = [line for line in r.stderr.splitlines() if line.strip()][-1]
    assert "3 non-finite steps skipped (steps 1, 2, 4), more than --max_skipped_steps 2" in last, r.stderr[-2000:]
    m = json.load(open(out / "training_metrics.json"), parse_constant=lambda c: 1 / 0)  # strict JSON
    assert m["status"] == "failed" and m["skipped_nonfinite"] == 3 and "--max_skipped_steps 2" in m["error"]
    assert m["final"] is None and m["steps"][0]["loss_plus"] is None and m["steps"][0]["nonfinite"]["loss_plus"] == "nan"


def test_json_outputs_survive_sigkill(tiny, tmp_path):
    rng = random.Random(0)
    out = tmp_path / "killed"
    for i in range(3):
        p = _start(tiny, out, steps=10, extra=["--save_steps", "1", "--log_steps", "1", "--memory_logging",
                                               "--memory_interval", "0.05", "--resume_from_checkpoint", "auto"])
        _wait_steps(out, 1 + 2 * i, p) if i else time.sleep(rng.uniform(2.0, 6.0))
        time.sleep(rng.uniform(0.0, 1.0))
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        for path in glob.glob(str(out / "**" / "*.json"), recursive=True):
            json.load(open(path))  # every JSON file parses
        t = out / "trajectory.jsonl"
        if t.exists():
            lines = t.read_text().split("\n")
            for line in lines[:-1]:
                json.loads(line)
    r = train(tiny, out, steps=10, extra=["--resume_from_checkpoint", "auto"])
    assert json.load(open(out / "training_metrics.json"))["status"] == "completed"
    assert len(losses(out)) == 10
    rep = replay(tiny, out / "trajectory.jsonl", tmp_path / "replayed")
    assert rep.returncode == 0, rep.stderr[-2000:]
    assert_same_weights(tmp_path / "replayed", out / "model")


def test_trajectory_size_20000_steps(tmp_path):
    from mezo import trajectory as T
    size = T.synthetic(str(tmp_path / "t.jsonl"), 20000)
    header, entries, _, _ = T.read(str(tmp_path / "t.jsonl"))
    blob = T.to_binary(header, entries)
    print(f"20000 steps: jsonl {size} bytes, binary {len(blob)} bytes")
    assert len(entries) == 20000 and size < 2.5e6 and len(blob) < 0.1e6


# ------------------------------------------------------------------------------- bad input
def test_bad_checkpoint_inputs(tiny, ref1, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run_script(["--model_name", tiny, "--resume_from_checkpoint", str(empty), "--output_dir", str(tmp_path / "o")])
    one_line_error(r, "--resume_from_checkpoint")
    r = run_script(["--model_name", tiny, "--resume_from_checkpoint", str(tmp_path / "nope"), "--output_dir", str(tmp_path / "o")])
    one_line_error(r, "no such file")
    half = tmp_path / ".tmp-step_3"  # an interrupted save: no manifest
    half.mkdir()
    (half / ".metadata").write_bytes(b"x")
    r = run_script(["--model_name", tiny, "--resume_from_checkpoint", str(half), "--output_dir", str(tmp_path / "o")])
    one_line_error(r, "incomplete")
    other = build_model(str(tmp_path / "other"), arch="opt")
    r = run_script(["--model_name", other, "--resume_from_checkpoint", str(ref1 / "checkpoints" / "step_3"),
                    "--output_dir", str(tmp_path / "o")])
    one_line_error(r, "written for model")
    r = run_script(["--model_name", tiny, "--resume_from_checkpoint", str(ref1 / "checkpoints" / "step_3"),
                    "--output_dir", str(tmp_path / "o"), *FAST, "--seed", "7"])
    one_line_error(r, "--seed")
    f = tmp_path / "file"
    f.write_text("x")
    r = run_script(["--model_name", tiny, "--output_dir", str(f / "sub")])
    one_line_error(r, "--output_dir")
    # a checkpoint of a model with other shapes but the same name (e.g. the folder was overwritten)
    m = json.load(open(ref1 / "checkpoints" / "step_3" / "manifest.json"))
    m["model_name"] = other
    fake = tmp_path / "fake" / "checkpoints" / "step_3"
    os.makedirs(fake)
    for name in os.listdir(ref1 / "checkpoints" / "step_3"):
        (fake / name).write_bytes((ref1 / "checkpoints" / "step_3" / name).read_bytes())
    (fake / "manifest.json").write_text(json.dumps(m))
    r = run_script(["--model_name", other, "--resume_from_checkpoint", str(fake), "--output_dir", str(tmp_path / "o2"),
                    *FAST])
    assert r.returncode == 2 and "cannot load" in r.stderr.strip().splitlines()[-1], r.stderr[-2000:]


def test_bad_trajectory_inputs(tiny, ref1, tmp_path):
    lines = (ref1 / "trajectory.jsonl").read_text().splitlines(keepends=True)
    gap = tmp_path / "gap.jsonl"
    gap.write_text("".join(lines[:2] + lines[3:]))  # step 2 missing
    r = run_script(["--model_name", tiny, "--resume_trajectory", str(gap), "--output_dir", str(tmp_path / "o"), *FAST])
    one_line_error(r, "expected 2")
    r = replay(tiny, gap, tmp_path / "rep")
    one_line_error(r, "expected 2")
    cut = tmp_path / "cut.jsonl"
    cut.write_text("".join(lines[:4]) + lines[4][:15])
    r = replay(tiny, cut, tmp_path / "rep")
    one_line_error(r, "truncated")
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(lines[:2]) + lines[2][:15] + "\n" + "".join(lines[3:]))
    r = run_script(["--model_name", tiny, "--resume_trajectory", str(bad), "--output_dir", str(tmp_path / "o"), *FAST])
    one_line_error(r, "line 3")
    r = replay(tiny, tmp_path / "none.jsonl", tmp_path / "rep")
    one_line_error(r, "--trajectory")
    f = tmp_path / "file"
    f.write_text("x")
    r = replay(tiny, ref1 / "trajectory.jsonl", f / "sub" / "rep")
    one_line_error(r, "--output")
    # another base (same architecture and name pattern, other weights): refused, or replayed with --force
    other = build_model(str(tmp_path / "other"), seed=1)
    r = replay(other, ref1 / "trajectory.jsonl", tmp_path / "rep_other")
    lines = [line for line in r.stderr.splitlines() if line.strip()]  # after the model's loading bar
    assert r.returncode == 2 and f"--base {other}: not the model the trajectory was trained from" in lines[-1]
    assert not (tmp_path / "rep_other").exists()
    r = replay(other, ref1 / "trajectory.jsonl", tmp_path / "rep_other", extra=["--force"])
    assert r.returncode == 0 and "replaying anyway (--force)" in r.stderr, r.stderr[-2000:]
    assert os.path.exists(tmp_path / "rep_other" / "model.safetensors")


# ------------------------------------------------------------------------------- SLURM requeue
FAKE_TORCHRUN = """#!{python}
import json, os, signal, sys
assert sys.argv[1:3] == ["-m", "torch.distributed.run"], sys.argv  # torchrun of the generating interpreter
args = sys.argv[3:]
out = args[args.index("--output_dir") + 1]
with open(os.path.join(out, "torchrun_call.json"), "w") as f:
    json.dump({{"args": args, "usr1_ignored": signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN}}, f)
mode = os.environ["FAKE_MODE"]
if mode in ("preempted", "completed"):
    with open(os.path.join(out, "training_metrics.json"), "w") as f:
        json.dump({{"status": mode}}, f, indent=1)
sys.exit({{"preempted": 1, "completed": 0, "crashed": 1, "exit75": 75}}[mode])
"""


@pytest.mark.parametrize("mode,rc,requeued", [("preempted", 0, True), ("exit75", 0, True), ("completed", 0, False),
                                               ("crashed", 1, False)])
def test_sbatch_script_requeues_after_preemption(tmp_path, mode, rc, requeued):
    """The generated sbatch script, run by bash with fake srun / scontrol / python (the interpreter that
    wrote the script, running `-m torch.distributed.run`): torchrun gets
    SIGUSR1 ignored and --resume_from_checkpoint auto; a preemption (exit 75, or torchrun's exit 1
    with training_metrics.json "preempted" written by this job) requeues the job; a crash does
    not, even when an older training_metrics.json says "preempted"."""
    from mezo.experiments import slurm
    bin_, out, calls = tmp_path / "bin", tmp_path / "out", tmp_path / "calls"
    bin_.mkdir()
    out.mkdir()
    (bin_ / "scontrol").write_text(f'#!/bin/bash\necho "$*" >> {calls}\n[ "$1" = show ] && echo node1\nexit 0\n')
    (bin_ / "srun").write_text('#!/bin/bash\nwhile [[ "$1" == --* ]]; do shift; done\nexec "$@"\n')
    (bin_ / "python").write_text(FAKE_TORCHRUN.format(python=sys.executable))  # stands for the interpreter
    for f in bin_.iterdir():
        f.chmod(0o755)
    if mode == "crashed":  # a stale "preempted" from an earlier job must not requeue a crash
        (out / "training_metrics.json").write_text('{"status": "preempted"}')
        os.utime(out / "training_metrics.json", (time.time() - 3600, time.time() - 3600))
    script = tmp_path / "run.sbatch"
    script.write_text(slurm.sbatch_script("r", {"output_dir": str(out), "task_name": "SST2"},
                                          slurm.SlurmOptions(partition="p", gpus=2, python=str(bin_ / "python"),
                                                             setup=f"echo setup > {tmp_path / 'setup_ran'}"), ROOT))
    env = dict(os.environ, PATH=f"{bin_}:{os.environ['PATH']}", SLURM_JOB_ID="4242", SLURM_JOB_NODELIST="node1",
               SLURM_NNODES="1", FAKE_MODE=mode)
    r = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == rc, r.stdout + r.stderr
    call = json.load(open(out / "torchrun_call.json"))
    assert call["usr1_ignored"] and call["args"][-2:] == ["--resume_from_checkpoint", "auto"]
    assert "--nproc_per_node" in call["args"]
    assert ("requeue 4242" in calls.read_text()) == requeued, calls.read_text()
    assert not glob.glob(str(out / ".slurm-start-*"))
    assert (tmp_path / "setup_ran").read_text() == "setup\n"  # the --slurm_setup line ran first


@pytest.mark.parametrize("kill_after,save_steps", [(5, 2), (2, 3)])
def test_auto_resume_replays_the_trajectory_after_a_crash(tiny, ref1, tmp_path, kill_after, save_steps):
    """SIGKILL right after step k's trajectory line: --resume_from_checkpoint auto loads the newest
    checkpoint (step_4; none for k=2) and replays the trajectory's later steps, so no step is lost
    and the run ends exactly as the uninterrupted one."""
    out = tmp_path / "crashed"
    r = train(tiny, out, extra=["--save_steps", str(save_steps), "--log_steps", "1"], ok=False,
              env={"MEZO_FAULT_KILL_AFTER_STEP": str(kill_after)})
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    ckpts = sorted(os.listdir(out / "checkpoints")) if (out / "checkpoints").exists() else []
    assert ckpts == (["step_2", "step_4"] if save_steps == 2 else [])
    r = train(tiny, out, extra=["--save_steps", str(save_steps), "--resume_from_checkpoint", "auto"])
    assert "replaying them" in r.stderr if ckpts else "replayed %d steps" % kill_after in r.stderr
    m = json.load(open(out / "training_metrics.json"))
    assert m["resumed"][-1]["step"] == kill_after
    assert losses(out) == losses(ref1)
    assert_same_weights(out / "model", ref1 / "model")
    assert (out / "trajectory.jsonl").read_text() == (ref1 / "trajectory.jsonl").read_text()

"""Equal wall-clock comparison of the zeroth-order methods (issue 16) on the default task.

Each method runs through the real entry point (accelerate_mezo.py: SmolLM2-135M-Instruct, SST-2,
the default data: the bundled sample, 1000 train / 100 dev / 200 test, batch 16, fp32, numerics
auto) with its hyper-parameters (HPARAMS, chosen by the dev sweep in BENCHMARKS.md), for each
seed, under the same training wall-clock budget: max_steps = budget / the method's step time
(--step_s, or measured by a pilot of --pilot_steps steps), evaluated --evals times evenly (dev and
test; the trainer also evaluates after the last step). The budget counts the steps only
(training_metrics.json step_time_s; step 1 at the median step, its compilation excluded:
mezo.experiments.curves); evaluation is left out, it costs every method the same.
Records per evaluation (mezo.experiments.curves): step, training wall-clock, forward passes,
dev / test accuracy, dev loss; writes --json and the four-panel plot --png.

    python bench/bench_methods_wallclock.py --budget_s 300 --seeds 0 1 --methods mezo block fzoo
    python bench/bench_methods_wallclock.py --budget_s 120 --seeds 0 --variant "block_lr1e-4=block:--learning_rate 1e-4"

--variant NAME=METHOD:FLAGS adds a run of METHOD with FLAGS over its HPARAMS (the dev sweep).
--parallel runs that many runs at a time (one thread each): on a shared machine both members of a
pair see the same load. Run folders go under --runs_dir (checkpoints deleted after each run).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from mezo.experiments import curves  # noqa: E402

# each method's flags over the default run (README "The default run": lr 1e-5, eps 1e-3, batch 16,
# constant schedule); how they were chosen: BENCHMARKS.md, "Methods at equal wall-clock"
HPARAMS = {
    "mezo": ["--zo_method", "mezo", "--learning_rate", "1e-5"],
    "block": ["--zo_method", "block", "--zo_blocks", "4", "--learning_rate", "1e-4"],
    "fzoo": ["--zo_method", "fzoo", "--zo_num_samples", "4", "--learning_rate", "1e-3"],
}
# MeZO's 300-step default run as README "The default run" measured it (2026-12-03, numerics
# stochastic, 2 CPU cores idle, 2 threads; BENCHMARKS.md section 2): test accuracy 0.680 at step 300
# (0.640 at step 200, the one dev loss selects), median step 2.19 s (300 steps: about 660 s of steps)
MEZO_300_TEST_ACC = 0.68
MEZO_300_STEP_S = 2.19


def _run(name: str, flags: list[str], seed: int, steps: int, eval_steps: int, out: str, extra: list[str],
         threads: int) -> dict:
    cmd = [sys.executable, os.path.join(ROOT, "accelerate_mezo.py"), *flags, "--seed", str(seed), "--max_steps",
           str(steps), "--eval_steps", str(eval_steps), "--no_initial_eval", "--output_dir", out,
           "--overwrite_output_dir", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t0, load0 = time.time(), os.getloadavg()
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.time() - t0
    shutil.rmtree(os.path.join(out, "checkpoints"), ignore_errors=True)  # 0.5 GB each, not needed here
    if r.returncode != 0:  # recorded, never plotted: one failed run does not lose the others
        why = (r.stderr.strip().splitlines() or ["?"])[-1]
        print(f"{name} seed {seed}: FAILED (exit {r.returncode}): {why}", flush=True)
        return {"name": name, "seed": seed, "failed": f"exit {r.returncode}: {why}", "flags": flags}
    c = curves.run_curve(out)
    c.update(name=name, flags=flags, command=" ".join(shlex.quote(x) for x in cmd[1:]), wall_s=wall,
             load_before=load0, load_after=os.getloadavg())
    print(f"{name} seed {seed}: {c['steps']} steps, median step {c['median_step_s']:.2f}s, wall {wall:.0f}s, "
          f"points {[(round(p['train_s']), p['dev_acc'], p['test_acc']) for p in c['points']]}", flush=True)
    return c


def _mezo_refs(runs: list[dict]) -> dict:
    """seed -> the last evaluation of that seed's (first) mezo run."""
    refs = {}
    for r in runs:
        if r.get("method") == "mezo" and r.get("points"):
            refs.setdefault(r.get("seed"), r["points"][-1])
    return refs


def verdict(runs: list[dict]) -> list[dict]:
    """The issue's target, per seed, against that seed's own mezo run: its last evaluation's test
    accuracy (the 300-step accuracy when mezo ran 300 steps) and its training wall-clock T. For
    every other run of the seed: the first evaluation at or above that accuracy, its wall-clock t,
    t / T, and whether t <= T / 2."""
    refs, out = _mezo_refs(runs), []
    for r in runs:
        ref = refs.get(r.get("seed"))
        if r.get("method") == "mezo" or ref is None or not r.get("points"):
            continue
        acc, total = ref["test_acc"], ref["train_s"]
        hit = next((p for p in r["points"] if p["test_acc"] is not None and p["test_acc"] >= acc), None)
        out.append({"name": r["name"], "seed": r["seed"], "mezo_steps": ref["step"],
                    "mezo_test_acc": acc, "mezo_train_s": total,
                    "reached_at_step": hit and hit["step"], "reached_at_s": hit and hit["train_s"],
                    "fraction_of_mezo_s": hit and hit["train_s"] / total,
                    "met": bool(hit and hit["train_s"] <= total / 2)})
    return out


def _marks(runs: list[dict], half_readme: float) -> dict:
    """The plot's dashed line: these runs' own mezo reference (verdict's, per seed: the mean over
    seeds of its last test accuracy, half its mean wall-clock) when mezo ran here, else the
    README's default run."""
    ref = list(_mezo_refs(runs).values())
    if not ref:
        # no vertical mark: half of MeZO's 300-step wall-clock is known in idle seconds (README),
        # this axis is in the seconds the runs measured, under whatever load they met
        return {"y": MEZO_300_TEST_ACC, "text": f"dashed: MeZO's 300-step test accuracy {MEZO_300_TEST_ACC} (README, "
                                                f"{MEZO_300_STEP_S} s/step idle: half its wall-clock = {half_readme:.0f} idle s)"}
    acc = sum(p["test_acc"] for p in ref) / len(ref)
    x = sum(p["train_s"] for p in ref) / len(ref) / 2
    return {"y": acc, "x": x, "text": f"dashed: mezo's last test accuracy here ({acc:.3f}, mean of {len(ref)} seeds); dotted: "
                                      f"half its mean wall-clock ({x:.0f} s)"}


def _effective(flags: list[str]) -> tuple:
    """The flags as the parser sees them: the last value of each."""
    out, key = {}, None
    for f in flags:
        if f.startswith("--"):
            key = f
            out[key] = True
        elif key is not None:
            out[key] = f
    return tuple(sorted(out.items()))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--budget_s", type=float, required=True, help="training wall-clock per run (s, steps only)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="--seed of the runs")
    p.add_argument("--methods", nargs="*", default=list(HPARAMS), help=f"from {', '.join(HPARAMS)}")
    p.add_argument("--variant", action="append", default=[], help="NAME=METHOD:FLAGS (a dev sweep point)")
    p.add_argument("--step_s", action="append", default=[], help="METHOD_OR_NAME=SECONDS: skip its pilot")
    p.add_argument("--pilot_steps", type=int, default=5,
                   help="steps of the pilot that measures a method's step (>= 3: the first two compile)")
    p.add_argument("--evals", type=int, default=3, help="evaluations per run (evenly spaced in steps)")
    p.add_argument("--parallel", type=int, default=1, help="runs at a time")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS per run")
    p.add_argument("--extra", default="", help="flags added to every run (e.g. '--num_train 1000')")
    p.add_argument("--merge", nargs="*", default=None,
                   help="run nothing: the records of these earlier --json files (runs made by several invocations, "
                        "e.g. the sweep's seed-0 runs and the other seeds) for --methods/--variant x --seeds, into "
                        "--json and --png")
    p.add_argument("--runs_dir", default=os.path.join(ROOT, "outputs", "methods_wallclock"), help="run folders")
    p.add_argument("--json", default=os.path.join(ROOT, "bench", "results", "methods_wallclock.json"))
    p.add_argument("--png", default=os.path.join(ROOT, "bench", "results", "methods_wallclock.png"))
    a = p.parse_args(argv)
    extra = shlex.split(a.extra)
    runs = {m: HPARAMS[m] for m in a.methods}
    for v in a.variant:
        name, _, spec = v.partition("=")
        method, _, flags = spec.partition(":")
        runs[name] = HPARAMS[method] + shlex.split(flags)
    if a.pilot_steps < 3:
        p.error(f"--pilot_steps {a.pilot_steps}: needs 3 or more (the first two steps compile the kernels)")
    step_s = {k: float(v) for k, v in (s.split("=") for s in a.step_s)}
    os.makedirs(a.runs_dir, exist_ok=True)
    for name, flags in ([] if a.merge is not None else runs.items()):
        if name not in step_s:
            method = flags[flags.index("--zo_method") + 1]
            if method in step_s:
                step_s[name] = step_s[method]
                continue
            _run(name + "_pilot", flags, a.seeds[0], a.pilot_steps, a.pilot_steps,
                         os.path.join(a.runs_dir, name + "_pilot"), extra + ["--num_dev", "4", "--num_eval", "4"],
                         a.threads)
            # the first two steps carry one-off costs (compiling the perturbation kernels in step 1's
            # forwards, the update kernel in step 2's sweep, as the update is applied lazily)
            m = json.load(open(os.path.join(a.runs_dir, name + "_pilot", "training_metrics.json")))
            step_s[name] = statistics.median(s["step_time_s"] for s in m["steps"][2:])
    jobs = []
    for seed in ([] if a.merge is not None else a.seeds):
        for name, flags in runs.items():
            steps = max(1, int(a.budget_s / step_s[name]))
            jobs.append((name, flags, seed, steps, max(1, steps // a.evals)))
    t0 = time.time()
    if a.merge is not None:
        # a run is found by its seed and its effective flags (a sweep variant's "--learning_rate 1e-4
        # --learning_rate 3e-4" is HPARAMS' "--learning_rate 3e-4"); a later file wins over an earlier one
        earlier = {(r["seed"], _effective(r["flags"])): r for path in a.merge for r in json.load(open(path))["runs"]
                   if "failed" not in r}
        done = []
        for seed in a.seeds:
            for name, flags in runs.items():
                r = earlier.get((seed, _effective(flags)))
                done.append({**r, "name": name} if r else {"name": name, "seed": seed, "failed": "not in --merge",
                                                           "flags": flags})
        for r in done:  # the curves as this version of mezo.experiments.curves reads the run folders
            fresh = curves.run_curve(r["run"]) if "run" in r and os.path.isdir(r["run"]) else None
            if fresh:
                r.update(fresh)
    else:
        with ThreadPoolExecutor(max_workers=a.parallel) as pool:
            done = list(pool.map(lambda j: _run(j[0], j[1], j[2], j[3], j[4],
                                                os.path.join(a.runs_dir, f"{j[0]}_seed{j[2]}"), extra, a.threads),
                                 jobs))
    ok = [c for c in done if "failed" not in c]
    checks = verdict(ok)
    for v in checks:
        print(f"{v['name']} seed {v['seed']}: mezo's {v['mezo_steps']}-step test accuracy {v['mezo_test_acc']} "
              + (f"reached at step {v['reached_at_step']}, {v['fraction_of_mezo_s']:.2f} of mezo's wall-clock"
                 if v["reached_at_step"] else "not reached") + f": target {'met' if v['met'] else 'not met'}")
    half = MEZO_300_STEP_S * 300 / 2
    record = {"budget_s": a.budget_s, "seeds": a.seeds, "step_s_estimates": step_s, "parallel": a.parallel,
              "threads": a.threads, "extra": extra, "elapsed_s": time.time() - t0,
              "reference": {"mezo_300_step_test_acc": MEZO_300_TEST_ACC, "mezo_300_step_s": MEZO_300_STEP_S,
                            "half_wallclock_s": half, "source": "README 'The default run'"},
              "verdict": checks, "runs": done}
    os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
    with open(a.json, "w") as f:
        json.dump(record, f, indent=1)
    curves.plot(ok, a.png, f"SmolLM2-135M SST-2, {a.budget_s:g} s of training per run, seeds "
                             f"{' '.join(map(str, a.seeds))}",
                marks=_marks(ok, half))
    print(f"wrote {a.json} and {a.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

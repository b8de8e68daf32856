"""Accuracy against wall-clock and against forward passes, per run and per method (issue 16): what
bench/bench_methods_wallclock.py records and plots, and analyze_mezo_results.py --wallclock_curves
draws for any set of runs.

A point per evaluation of a MeZO run (training_metrics.json "evals"): its step, the training
wall-clock up to it (the sum of the steps' step_time_s: evaluation is left out, it costs every
method the same; step 1 counts as the median step, its excess being the one-off compilation of
the kernels, which does not grow with the run and would swamp a short one: first_step_s keeps it), the training forward passes up to it (mezo.methods.forwards_per_step: a dual
forward of [rows; rows] counts 2, FZOO N + 1 per step), dev and test accuracy, dev loss.
"""
from __future__ import annotations

import json
import math
import os

from mezo.methods import forwards_per_step


def _load(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def label_of(flags: dict) -> str:
    """A run's method and its hyper-parameters, e.g. "block k=4 lr=3e-05"."""
    m = flags.get("zo_method") or "mezo"
    parts = [m]
    if m == "block":
        parts.append(f"k={flags.get('zo_blocks')}")
    if m == "fzoo" or int(flags.get("zo_num_samples") or 1) > 1:
        parts.append(f"N={flags.get('zo_num_samples')}")
    parts.append(f"lr={flags.get('learning_rate'):g}")
    parts.append(f"eps={flags.get('zo_eps'):g}")
    return " ".join(parts)


def _acc(d):
    if not isinstance(d, dict):
        return None
    v = d.get("accuracy", d.get("f1"))
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def run_curve(run_dir: str) -> dict | None:
    """The curve of one MeZO run folder (None: not a MeZO run, or no metrics yet)."""
    flags, metrics = _load(os.path.join(run_dir, "run_config.json")), _load(os.path.join(run_dir, "training_metrics.json"))
    if not isinstance(flags, dict) or not isinstance(metrics, dict) or (flags.get("trainer") or "mezo") != "mezo" \
            or flags.get("zero_shot") or flags.get("icl"):
        return None
    method = flags.get("zo_method") or "mezo"
    per_step = forwards_per_step(method, int(flags.get("zo_num_samples") or 1))
    steps = sorted((s for s in metrics.get("steps", []) if isinstance(s.get("step_time_s"), (int, float))),
                   key=lambda s: s["step"])
    times = [s["step_time_s"] for s in steps]
    later = sorted(times[1:])
    median = later[len(later) // 2] if later else None
    cum, t = {}, 0.0
    for i, s in enumerate(steps):
        t += median if i == 0 and median is not None else s["step_time_s"]
        cum[s["step"]] = t
    points = []
    for e in metrics.get("evals", []):
        step = e.get("step")
        if step not in cum:
            continue  # an evaluation of steps rebuilt from a trajectory: no time recorded
        points.append({"step": step, "train_s": cum[step], "forwards": step * per_step,
                       "dev_acc": _acc(e.get("dev")), "test_acc": _acc(e.get("test")), "dev_loss": e.get("dev_loss")})
    return {"run": run_dir, "method": method, "label": label_of(flags), "seed": flags.get("seed"),
            "status": metrics.get("status"), "steps": len(steps), "forwards_per_step": per_step,
            "median_step_s": median, "first_step_s": times[0] if times else None, "points": points}


def collect(run_dirs) -> list[dict]:
    return [c for c in (run_curve(d) for d in run_dirs) if c is not None and c["points"]]


def plot(curves: list[dict], path: str, title: str = "", marks: dict | None = None) -> str:
    """Four panels (dev / test accuracy against training wall-clock / forward passes), one colour
    per label, one line per run (seed). marks: {"y": value, "x": seconds, "text": ...} drawn on the
    test-vs-wall-clock panel (e.g. MeZO's 300-step accuracy and half its wall-clock)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), sharey="row")
    labels = list(dict.fromkeys(c["label"] for c in curves))
    colours = {lab: plt.get_cmap("tab10")(i % 10) for i, lab in enumerate(labels)}
    for row, key in enumerate(("dev_acc", "test_acc")):
        for col, (xk, xname) in enumerate((("train_s", "training wall-clock (s, evaluation excluded)"),
                                           ("forwards", "training forward passes (batch of 16)"))):
            ax = axes[row][col]
            seen = set()
            for c in curves:
                pts = [(p[xk], p[key]) for p in c["points"] if p[key] is not None]
                if not pts:
                    continue
                xs, ys = zip(*pts)
                lab = c["label"] if c["label"] not in seen else None
                seen.add(c["label"])
                ax.plot(xs, ys, marker="o", color=colours[c["label"]], alpha=0.85, label=lab)
            if marks and key == "test_acc" and xk == "train_s":
                if marks.get("y") is not None:
                    ax.axhline(marks["y"], color="grey", ls="--", lw=1)
                if marks.get("x") is not None:
                    ax.axvline(marks["x"], color="grey", ls=":", lw=1)
                if marks.get("text"):
                    ax.text(0.02, 0.02, marks["text"], transform=ax.transAxes, fontsize=8, color="grey")
            ax.set_xlabel(xname)
            ax.set_ylabel(key.replace("_acc", " accuracy"))
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

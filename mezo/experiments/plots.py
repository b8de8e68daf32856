"""PNG plots (matplotlib, Agg): loss curve per run, memory over time, peak memory by method/size."""
from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from mezo.experiments.results import load_curves  # noqa: E402


def _save(fig, path: str) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def loss_curves(results_dir: str, runs: list[dict], out_dir: str) -> list[str]:
    os.makedirs(os.path.join(out_dir, "loss"), exist_ok=True)
    paths = []
    for rec in runs:
        steps, _ = load_curves(results_dir, rec)
        pts = [(s["step"], s["loss"]) for s in steps if isinstance(s.get("step"), (int, float))
               and isinstance(s.get("loss"), (int, float))]
        if not pts:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(*zip(*pts), lw=1)
        ax.set(xlabel="step", ylabel="training loss", title=f"{rec['run_dir']} [{rec['status']}]"[:90])
        paths.append(_save(fig, os.path.join(out_dir, "loss", f"{rec['run_id']}.png")))
    return paths


def memory_over_time(results_dir: str, runs: list[dict], out_dir: str) -> list[str]:
    fig, ax = plt.subplots(figsize=(7, 4))
    n = 0
    for rec in runs:
        _, samples = load_curves(results_dir, rec)
        gpu = [(s.get("t_s"), s.get("gpu_used_mib")) for s in samples]
        use_gpu = any(v is not None for _, v in gpu)
        pts = [(t, v / 1024 if use_gpu else None) for t, v in gpu] if use_gpu else \
              [(s.get("t_s"), (s.get("rss_bytes") or 0) / 2**30) for s in samples]
        pts = [(t, v) for t, v in pts if isinstance(t, (int, float)) and v is not None]
        if pts:
            ax.plot(*zip(*pts), label=f"{rec['run_dir']} ({'GPU' if use_gpu else 'RSS'})"[:60])
            n += 1
    if not n:
        plt.close(fig)
        return []
    ax.set(xlabel="time (s)", ylabel="memory (GiB)", title="Memory over time")
    ax.legend(fontsize=6)
    return [_save(fig, os.path.join(out_dir, "memory_over_time.png"))]


def peak_memory(memory: pd.DataFrame, out_dir: str) -> list[str]:
    if memory.empty:
        return []
    m = memory.copy()
    m["peak_gib"] = m["peak_gpu_used_gib"].fillna(m["peak_rss_gib"])
    m = m[m["peak_gib"].notna()]
    if m.empty:
        return []
    pivot = m.groupby(["model_size", "method"])["peak_gib"].max().unstack("method")
    fig, ax = plt.subplots(figsize=(7, 4))
    pivot.plot.bar(ax=ax, rot=0)
    ax.set(xlabel="model size", ylabel="peak memory (GiB; GPU, else RSS)", title="Peak memory by method and model size")
    return [_save(fig, os.path.join(out_dir, "peak_memory_by_method.png"))]

"""Write the CSV tables and the Markdown report of analyze_mezo_results.py."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd

from mezo.experiments import analysis, plots
from mezo.experiments.results import load_all, task_key

TABLE_TITLES = {"1": "Table 1: OPT-13B (1000 train examples)", "18": "Table 18: RoBERTa-large",
                "20": "Table 20: other OPT sizes / causal LMs (paper: OPT-30B and OPT-66B)"}
RESULT_COLUMNS = ["table", "model", "model_size", "task", "k", "method", "mode", "metric", "n_configs", "n_seeds",
                  "best_config", "dev_mean", "test_mean", "test_std", "ours", "paper_mean", "paper_std", "paper",
                  "diff", "paper_note"]


def _md(df: pd.DataFrame) -> str:
    if df.empty:
        return "_none_\n"
    cols = list(df.columns)
    cell = lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v)) else (f"{v:.3g}" if isinstance(v, float) else str(v))  # noqa: E731
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def _wide(table: str, ours: pd.DataFrame, paper: pd.DataFrame) -> str:
    """Methods x tasks per model size (k for RoBERTa): 'ours / paper (ours - paper)'."""
    p = paper[paper["table"] == table]
    o = ours[ours["table"] == table] if not ours.empty else pd.DataFrame(columns=RESULT_COLUMNS)
    if table == "18":
        groups = [(f"RoBERTa-large, k = {k}", p[p["k"].isna() | (p["k"] == k)], o[o["k"] == k]) for k in (16, 512)]
    else:
        sizes = sorted(set(p["size"]) | set(o["model_size"].dropna()))
        groups = [(f"model size {s}", p[p["size"] == s], o[o["model_size"] == s]) for s in sizes]
    parts = []
    for title, pk, ok in groups:
        tasks = list(dict.fromkeys(list(pk["task"]) + list(ok["task"])))
        methods = list(dict.fromkeys(list(pk["method"]) + list(ok["method"])))
        rows = []
        for m in methods:
            row = {"method": m}
            for t in tasks:
                pv = pk[(pk["method"] == m) & (pk["task_key"] == task_key(t))]["value"].dropna()
                ov = ok[(ok["method"] == m) & (ok["task"].map(task_key) == task_key(t))]
                ours_cell = ov["ours"].iloc[0] if len(ov) else "-"
                paper_cell = f"{pv.iloc[0]:.1f}" if len(pv) else ""
                diff = f" ({ov['test_mean'].iloc[0] - pv.iloc[0]:+.1f})" if len(ov) and len(pv) else ""
                row[t] = f"{ours_cell} / {paper_cell}{diff}"
            rows.append(row)
        if rows:
            parts.append(f"**{title}** (cells: ours / paper (ours - paper); '-' not run; "
                         f"blank paper: not in the paper)\n\n" + _md(pd.DataFrame(rows)))
    return "\n".join(parts) or "_no results and no paper numbers_\n"


def write_all(results_dir: str, output_dir: str, create_plots: bool = False,
              include_incomplete: bool = False) -> dict:
    os.makedirs(output_dir, exist_ok=True)
    recs = load_all(results_dir)
    runs = pd.DataFrame(recs)
    if runs.empty:
        runs = pd.DataFrame(columns=["run_id", "run_dir", "status", "problems", "task", "mode", "test", "dev",
                                     "k", "config", "has_memory_log", "mean_step_time_s", "model_name"])
    runs.to_csv(os.path.join(output_dir, "all_results.csv"), index=False)
    paper = analysis.paper_results()
    best = analysis.attach_paper(analysis.select_best(runs, include_incomplete), paper)
    written = {"all_results": os.path.join(output_dir, "all_results.csv")}
    for table, fname in analysis.TABLE_FILES.items():
        part = best[best["table"] == table] if not best.empty else pd.DataFrame(columns=RESULT_COLUMNS)
        part = part.reindex(columns=RESULT_COLUMNS).sort_values(["task", "k", "method"], na_position="first")
        part.to_csv(os.path.join(output_dir, fname), index=False)
        written[table] = os.path.join(output_dir, fname)
    memory, wall = analysis.memory_table(runs), analysis.wallclock_table(runs)
    memory.to_csv(os.path.join(output_dir, "table_22_memory_analysis.csv"), index=False)
    wall.to_csv(os.path.join(output_dir, "table_23_wallclock.csv"), index=False)
    pngs = []
    if create_plots:
        pdir = os.path.join(output_dir, "plots")
        os.makedirs(pdir, exist_ok=True)
        pngs = plots.loss_curves(results_dir, recs, pdir) + plots.memory_over_time(results_dir, recs, pdir) \
            + plots.peak_memory(memory, pdir)
    bad = runs[(runs["status"] != "completed") | (runs["problems"].fillna("") != "")] if len(runs) else runs
    md = [f"# MeZO reproduction report\n\nResults folder: `{results_dir}`; {len(runs)} run folders, "
          f"{int((runs['status'] == 'completed').sum()) if len(runs) else 0} completed.\n",
          analysis.__doc__.split("\n\n", 1)[1].strip() + "\n"]
    for table in ("1", "18", "20"):
        md.append(f"## {TABLE_TITLES[table]}\n\n{_wide(table, best, paper)}")
    md.append("## Table 22: peak memory (paper: OPT on MultiRC, nvidia-smi, per-device batch 1)\n\n" + _md(memory))
    md.append("## Table 23: wall-clock time per step (paper: MultiRC, 80GB A100s)\n\n" + _md(wall))
    md.append("## Runs not counted (in progress, killed, failed, or unreadable)\n\n"
              + _md(bad.reindex(columns=["run_dir", "status", "last_step", "result_from", "problems"])))
    if pngs:
        md.append("## Plots\n\n" + "\n".join(f"- `{os.path.relpath(p, output_dir)}`" for p in pngs) + "\n")
    report = os.path.join(output_dir, "mezo_reproduction_report.md")
    with open(report, "w", encoding="utf-8") as f:
        f.write("\n".join(md))
    written.update(report=report, memory=os.path.join(output_dir, "table_22_memory_analysis.csv"),
                   wallclock=os.path.join(output_dir, "table_23_wallclock.csv"), plots=pngs, n_runs=len(runs),
                   n_not_counted=len(bad))
    return written

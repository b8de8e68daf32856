"""Write the CSV tables and the Markdown report of analyze_mezo_results.py."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd

from mezo.experiments import analysis, plots
from mezo.experiments.results import load_all, task_key

TABLE_TITLES = {"1": "Table 1: OPT-13B (1000 train examples)", "18": "Table 18: RoBERTa-large",
                "20": "Table 20: other OPT sizes / causal LMs (paper: OPT-30B and OPT-66B)"}
RESULT_COLUMNS = ["table", "model", "model_size", "task", "k", "method", "mode", "numerics", "metric", "selection",
                  "n_configs", "n_seeds", "n_runs", "best_config", "dev_mean", "test_mean", "test_std", "ours",
                  "paper_mean", "paper_std", "paper", "diff", "tolerance", "verdict", "selected_not_last",
                  "selected_steps", "peak_memory_gib", "peak_memory_source", "paper_memory_gb", "memory_ratio",
                  "median_step_time_s", "first_step_time_s", "device_hours", "paper_note"]
# all_results.csv: one row per cell, (table, task, model size, k, method)
CELL_COLUMNS = ["table", "task", "model", "model_size", "k", "method", "numerics", "metric", "selection", "n_seeds",
                "n_configs", "n_runs", "best_config", "dev_mean", "test_mean", "test_std", "paper_mean", "paper_std",
                "diff", "tolerance", "verdict", "selected_not_last", "peak_memory_gib", "peak_memory_source",
                "paper_memory_gb", "memory_ratio", "median_step_time_s", "first_step_time_s", "device_hours"]
CRITERIA = {"dev_loss": "the lowest dev loss (the reference's OPT runs: --load_best_model_at_end)",
            "dev_accuracy": "the highest dev accuracy (the reference's RoBERTa runs)",
            "dev_f1": "the highest dev F1",
            "last": "the last evaluation (--selection_metric last, no dev set, or a run that predates the dev loss)"}


def _md(df: pd.DataFrame) -> str:
    if df.empty:
        return "_none_\n"
    cols = list(df.columns)
    cell = lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v)) else (f"{v:.3g}" if isinstance(v, float) else str(v))  # noqa: E731
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


MARK = {"reproduced": " ✓", "not reproduced": " ✗"}


def _wide(table: str, ours: pd.DataFrame, paper: pd.DataFrame) -> str:
    """Methods x tasks per model size (k for RoBERTa): 'ours / paper (ours - paper) verdict'."""
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
                mark = MARK.get(ov["verdict"].iloc[0], "") if len(ov) else ""
                flag = "*" if len(ov) and ov["selected_not_last"].iloc[0] else ""
                row[t] = f"{ours_cell}{flag} / {paper_cell}{diff}{mark}"
            rows.append(row)
        if rows:
            parts.append(f"**{title}** (cells: ours / paper (ours - paper), ✓ reproduced, ✗ not; * the selected "
                         f"evaluation is not the last one for some seed; '-' not run; blank paper: not in the "
                         f"paper)\n\n" + _md(pd.DataFrame(rows)))
    return "\n".join(parts) or "_no results and no paper numbers_\n"


def _table_notes(part: pd.DataFrame) -> str:
    """Which criterion chose the numbers, which cells report an evaluation that is not the last
    one, what the cells cost."""
    if part.empty:
        return ""
    crits = sorted({c for v in part["selection"].fillna("") for c in str(v).split("/") if c})
    lines = ["Selection: each run reports the evaluation its criterion selected ("
             + ("; ".join(f"`{c}`: {CRITERIA.get(c, c)}" for c in crits) or "none recorded")
             + "). Then per seed the configuration with the best selected dev score; mean (std, numpy ddof=0) over "
               "seeds, as the reference's gather_result.py."]
    flagged = part[part["selected_not_last"].fillna(0) > 0]
    if len(flagged):
        lines.append("Cells whose selected evaluation is not the last one (selected step / last step per seed): "
                     + "; ".join(f"{r.task} {r.model_size}{f' k={int(r.k)}' if not pd.isna(r.k) else ''} {r.method} "
                                 f"({r.selected_steps})" for r in flagged.itertuples()) + ".")
    else:
        lines.append("Every cell reports the last evaluation of its runs.")
    v = part["verdict"].value_counts()
    lines.append(f"Verdicts: {int(v.get('reproduced', 0))} reproduced, {int(v.get('not reproduced', 0))} not "
                 f"reproduced, {int(v.get('no paper number', 0))} without a paper number. Device-hours of the "
                 f"table's runs (every configuration and seed): {part['device_hours'].sum(min_count=1) or 0:.3g}.")
    cols = ["task", "model_size", "k", "method", "numerics", "selection", "ours", "paper", "diff", "tolerance",
            "verdict", "selected_not_last", "peak_memory_gib", "paper_memory_gb", "median_step_time_s",
            "device_hours"]
    return "\n\n".join(lines) + "\n\n" + _md(part.reindex(columns=cols))


RUN_COLUMNS_FIRST = ["run_id", "run_dir", "status", "task", "model_name", "model_size", "mode", "method", "numerics",
                     "config", "seed", "train_seed", "metric", "selection", "selected_step", "last_eval_step",
                     "selected_is_last", "dev", "dev_loss", "test", "last_eval_test", "n_evals",
                     "median_step_time_s", "first_step_time_s", "total_time_s", "world_size", "device_hours",
                     "peak_memory_gib", "peak_memory_source", "result_from", "problems"]


def write_all(results_dir: str, output_dir: str, create_plots: bool = False,
              include_incomplete: bool = False) -> dict:
    os.makedirs(output_dir, exist_ok=True)
    recs = load_all(results_dir)
    runs = pd.DataFrame(recs)
    if runs.empty:
        runs = pd.DataFrame(columns=["run_id", "run_dir", "status", "problems", "task", "mode", "test", "dev",
                                     "k", "config", "has_memory_log", "median_step_time_s", "model_name"])
    runs = runs.reindex(columns=RUN_COLUMNS_FIRST + [c for c in runs.columns if c not in RUN_COLUMNS_FIRST])
    runs.to_csv(os.path.join(output_dir, "runs.csv"), index=False)
    paper = analysis.paper_results()
    best = analysis.attach_paper(analysis.select_best(runs, include_incomplete), paper)
    if not best.empty:
        best = best.sort_values(["table", "task", "model_size", "k", "method"], na_position="first")
    cells = best.reindex(columns=CELL_COLUMNS) if not best.empty else pd.DataFrame(columns=CELL_COLUMNS)
    cells.to_csv(os.path.join(output_dir, "all_results.csv"), index=False)
    written = {"all_results": os.path.join(output_dir, "all_results.csv"), "runs": os.path.join(output_dir, "runs.csv")}
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
          analysis.__doc__.split("\n\n", 1)[1].strip() + "\n",
          "Device-hours: wall time x world size / 3600 per run, the wall time from the end of model loading to "
          "the run's last metrics write (training and evaluations; a resumed run counts its last segment only). "
          "Step times: the median without step 1, which is reported alone (compilation, warm-up).\n"]
    for table in ("1", "18", "20"):
        part = best[best["table"] == table] if not best.empty else pd.DataFrame(columns=RESULT_COLUMNS)
        md.append(f"## {TABLE_TITLES[table]}\n\n{_wide(table, best, paper)}\n{_table_notes(part)}")
    md.append("## Table 22: peak memory (paper: OPT on MultiRC, nvidia-smi, per-device batch 1)\n\n"
              "memory_verdict: our nvidia-smi peak within 5% of the paper's figure.\n\n" + _md(memory))
    md.append("## Table 23: wall-clock time per step (paper: MultiRC, 80GB A100s)\n\n"
              "median_step_time_s: the median over runs of each run's median step time without step 1; "
              "first_step_time_s: step 1 alone.\n\n" + _md(wall))
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

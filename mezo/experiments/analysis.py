"""Pick the best configuration per (table, model, task, method[, k]) by dev metric, aggregate seeds,
and put our numbers beside the paper's.

Selection follows the paper (Appendix E.3, LM-BFF protocol): for each hyperparameter configuration
the dev metric (at the best-dev checkpoint) is averaged over seeds; the configuration with the best
mean dev is kept and its test metric is reported as mean (std) over seeds (std with ddof=0, as
numpy). Runs whose status is not "completed" are left out unless include_incomplete is set.

Paper numbers (mezo/experiments/paper_*.csv) are from Malladi et al. 2023, arXiv:2305.17333:
Table 1 (OPT-13B), Table 18 (RoBERTa-large), Table 20 (OPT-30B/66B), Table 22 (memory on MultiRC),
Table 23 (wall-clock per step on MultiRC). Empty cells are ones the paper does not give.
"""
from __future__ import annotations

import os

import numpy as np
import pandas as pd

from mezo.experiments.results import model_size, task_key

HERE = os.path.dirname(os.path.abspath(__file__))
TABLE_FILES = {"1": "table_1_opt13b_results.csv", "18": "table_18_roberta_results.csv",
               "20": "table_20_opt_results.csv"}
MEMORY_METHOD = {"mezo": "Zero-shot / MeZO", "zero_shot": "Zero-shot / MeZO", "icl": "ICL",
                 "ft_prefix": "Prefix FT", "ft": "Full-parameter FT"}


def paper_results() -> pd.DataFrame:
    df = pd.read_csv(os.path.join(HERE, "paper_results.csv"), dtype={"table": str, "k": "Int64"})
    df["task_key"] = df["task"].map(task_key)
    df["size"] = df["model"].map(lambda m: model_size(m) if "RoBERTa" not in m else "350M")
    return df


def table_of(rec: dict) -> str:
    if rec.get("family") == "roberta":
        return "18"
    return "1" if rec.get("model_size") == "13B" and "opt" in str(rec.get("model_name")).lower() else "20"


def _fmt(mean, std, n) -> str:
    if mean is None or pd.isna(mean):
        return ""
    return f"{mean:.1f} ({std:.1f})" if n and n > 1 else f"{mean:.1f}"


def select_best(runs: pd.DataFrame, include_incomplete: bool = False) -> pd.DataFrame:
    """One row per (table, model, task, k, method) from the runs (a DataFrame of result records)."""
    ok = runs[runs["test"].notna() & runs["task"].notna() & runs["mode"].notna()].copy()
    if not include_incomplete:
        ok = ok[ok["status"] == "completed"]
    if ok.empty:
        return pd.DataFrame()
    ok["table"] = ok.apply(lambda r: table_of(r.to_dict()), axis=1)
    ok["k"] = ok["k"].astype("Int64") if "k" in ok else pd.NA
    ok["kk"] = ok["k"].fillna(-1)
    rows = []
    for (table, model, task, kk, mode), g in ok.groupby(["table", "model_name", "task", "kk", "mode"], dropna=False):
        per_cfg = g.groupby("config", dropna=False).agg(dev=("dev", "mean"), n=("test", "size"))
        best_cfg = per_cfg["dev"].fillna(-np.inf).idxmax() if per_cfg["dev"].notna().any() else per_cfg.index[0]
        best = g[g["config"] == best_cfg]
        test = best["test"].to_numpy(float)
        rows.append(dict(table=table, model=model, model_size=best["model_size"].iloc[0], task=task,
                         k=None if kk == -1 else int(kk), method=best["method"].iloc[0], mode=mode,
                         metric=best["metric"].iloc[0], n_configs=len(per_cfg), n_seeds=len(test),
                         best_config=best_cfg, dev_mean=best["dev"].mean(), test_mean=test.mean(),
                         test_std=test.std() if len(test) > 1 else np.nan))
    return pd.DataFrame(rows)


def attach_paper(best: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    """Add paper_mean / paper_std / paper / diff; rows the paper does not have stay blank."""
    if best.empty:
        return best
    out = []
    for _, r in best.iterrows():
        m = paper[(paper["table"] == r["table"]) & (paper["method"] == r["method"]) &
                  (paper["task_key"] == task_key(r["task"]))]
        if r["table"] in ("1", "20"):
            m = m[m["size"] == r["model_size"]]
        if r["table"] == "18" and not m.empty:
            m = m[m["k"].isna() | (m["k"] == (r["k"] if r["k"] is not None else -1))]
        p = m.iloc[0] if len(m) else None
        pv = p["value"] if p is not None else np.nan
        ps = p["std"] if p is not None else np.nan
        out.append({**r.to_dict(), "ours": _fmt(r["test_mean"], r["test_std"], r["n_seeds"]),
                    "paper_mean": pv, "paper_std": ps,
                    "paper": "" if pd.isna(pv) else (f"{pv:.1f} ({ps:.1f})" if not pd.isna(ps) else f"{pv:.1f}"),
                    "diff": r["test_mean"] - pv if not pd.isna(pv) else np.nan,
                    "paper_note": "" if p is None or pd.isna(p["note"]) else p["note"]})
    return pd.DataFrame(out)


def memory_table(runs: pd.DataFrame) -> pd.DataFrame:
    mem = runs[runs["has_memory_log"] == True].copy()  # noqa: E712
    if mem.empty:
        return pd.DataFrame(columns=["model", "model_size", "method", "task", "world_size", "device", "n_runs",
                                     "peak_gpu_used_gib", "peak_allocated_gib", "peak_rss_gib", "paper_gpus",
                                     "paper_memory_gb"])
    paper = pd.read_csv(os.path.join(HERE, "paper_memory.csv"))
    rows = []
    keys = ["model_name", "model_size", "mode", "task", "world_size", "device", "dtype"]
    for key, g in mem.groupby(keys, dropna=False):
        d = dict(zip(keys, key))
        p = paper[(paper["model_size"] == d["model_size"]) & (paper["method"] == MEMORY_METHOD.get(d["mode"], "-"))]
        gib = lambda col: g[col].max() / 2**30 if g[col].notna().any() else np.nan  # noqa: E731
        rows.append(dict(model=d["model_name"], model_size=d["model_size"], method=g["method"].iloc[0],
                         task=d["task"], world_size=d["world_size"], device=d["device"], dtype=d["dtype"],
                         n_runs=len(g),
                         peak_gpu_used_gib=g["peak_gpu_used_mib"].max() / 1024 if g["peak_gpu_used_mib"].notna().any() else np.nan,
                         peak_allocated_gib=gib("peak_allocated_bytes"), peak_reserved_gib=gib("peak_reserved_bytes"),
                         peak_rss_gib=gib("peak_rss_bytes"),
                         paper_method=p["method"].iloc[0] if len(p) else "",
                         paper_gpus=p["gpus"].iloc[0] if len(p) else np.nan,
                         paper_memory_gb=p["memory_gb"].iloc[0] if len(p) else np.nan))
    return pd.DataFrame(rows)


def wallclock_table(runs: pd.DataFrame) -> pd.DataFrame:
    t = runs[runs["mean_step_time_s"].notna() & runs["mode"].notna()].copy()
    cols = ["model", "model_size", "method", "task", "batch_size", "world_size", "device", "n_runs",
            "mean_step_time_s", "paper_step_time_s", "paper_gpus", "ratio_to_paper"]
    if t.empty:
        return pd.DataFrame(columns=cols)
    paper = pd.read_csv(os.path.join(HERE, "paper_wallclock.csv"))
    t["eff_bs"] = t["batch_size"].fillna(0).astype(int) * t["gradient_accumulation_steps"].fillna(1).astype(int)
    rows = []
    for (model, size, mode, task, bs, ws, dev), g in t.groupby(
            ["model_name", "model_size", "mode", "task", "eff_bs", "world_size", "device"], dropna=False):
        kind = "FT" if str(mode).startswith("ft") else "MeZO" if str(mode).startswith("mezo") else None
        p = paper[(paper["model_size"] == size) & (paper["method"] == kind) & (paper["batch_size"] == bs)]
        ours = g["mean_step_time_s"].mean()
        pv = p["step_time_s"].iloc[0] if len(p) else np.nan
        rows.append(dict(model=model, model_size=size, method=g["method"].iloc[0], task=task, batch_size=bs,
                         world_size=ws, device=dev, n_runs=len(g), mean_step_time_s=ours, paper_step_time_s=pv,
                         paper_gpus=p["gpus"].iloc[0] if len(p) else np.nan,
                         ratio_to_paper=ours / pv if not pd.isna(pv) else np.nan))
    return pd.DataFrame(rows, columns=cols)

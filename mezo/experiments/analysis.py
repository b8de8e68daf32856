"""Our numbers in the paper's cells: per (table, model, task, k, method) the reference's choice of
configuration and aggregation over seeds, beside the paper's number, with a verdict.

Each run reports its selected evaluation (mezo/selection.py: lowest dev loss for the causal LMs,
as large_models' `--load_best_model_at_end`; highest dev accuracy for RoBERTa, as medium_models'
trainer). Aggregation, as princeton-nlp/MeZO medium_models/tools/gather_result.py: for each seed
(data seed and training seed) the configuration with the highest selected dev score (the first
in run-folder order on a tie, as it sorts by output_dir), then the mean and the standard
deviation over seeds of those runs' test scores, std with numpy's default ddof=0
(`np.std`, as gather_result.py; blank for one seed). The OPT tables have one seed (train-set
seed 0), so this is the best configuration by dev; the dev score is the dev metric, the only dev
figure in the reference's result files (run.py writes dev_<metric> of the kept model). Runs whose
status is not "completed" are left out unless include_incomplete is set.

Verdict per cell: "reproduced" when |ours - paper| <= 1 point (or the paper's std, when Table 18
gives a larger one), and, where the paper has a memory figure for the cell (Table 22: OPT on
MultiRC, per method and size) and ours is an nvidia-smi figure, our peak within 5% of it (GiB
against the paper's GB, both nvidia-smi's MiB / 1024); "not reproduced" otherwise; "no paper
number" when the paper has none.

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
SCORE_TOLERANCE = 1.0     # points of accuracy / F1: the seed's criterion for a reproduced number
MEMORY_TOLERANCE = 0.05   # relative, on peak memory
MEMORY_TASK = "multirc"   # Table 22 measures MultiRC


def paper_results() -> pd.DataFrame:
    df = pd.read_csv(os.path.join(HERE, "paper_results.csv"), dtype={"table": str, "k": "Int64"})
    df["task_key"] = df["task"].map(task_key)
    df["size"] = df["model"].map(lambda m: model_size(m) if "RoBERTa" not in m else "350M")
    return df


def paper_memory() -> pd.DataFrame:
    return pd.read_csv(os.path.join(HERE, "paper_memory.csv"))


def table_of(rec: dict) -> str:
    if rec.get("family") == "roberta":
        return "18"
    return "1" if rec.get("model_size") == "13B" and "opt" in str(rec.get("model_name")).lower() else "20"


def _fmt(mean, std, n) -> str:
    if mean is None or pd.isna(mean):
        return ""
    return f"{mean:.1f} ({std:.1f})" if n and n > 1 else f"{mean:.1f}"


def _joined(values) -> str:
    return "/".join(sorted({str(v) for v in values if v is not None and not (isinstance(v, float) and np.isnan(v))}))


def _int(v):
    """A seed as written (a column with blanks holds floats)."""
    return int(v) if isinstance(v, float) and v.is_integer() else v


def _median(values) -> float:
    v = [x for x in values if x is not None and not pd.isna(x)]
    return float(np.median(v)) if v else np.nan


def best_per_seed(g: pd.DataFrame) -> pd.DataFrame:
    """The run of each seed (data seed, training seed) with the highest selected dev score: the
    first in run-folder order on a tie or when no run of the seed has a dev score."""
    chosen = []
    for _, s in g.sort_values("run_dir").groupby(["seed", "train_seed"], dropna=False, sort=True):
        dev = s["dev"].astype(float)
        chosen.append(s.loc[dev.idxmax()] if dev.notna().any() else s.iloc[0])  # idxmax: the first maximum
    return pd.DataFrame(chosen)


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
    for col in ("seed", "train_seed"):
        ok[col] = ok[col] if col in ok else None
    rows = []
    for (table, model, task, kk, mode), g in ok.groupby(["table", "model_name", "task", "kk", "mode"], dropna=False):
        best = best_per_seed(g)
        test = best["test"].to_numpy(float)
        configs = list(best["config"])
        if len(set(configs)) == 1:
            best_config = configs[0]
        else:
            best_config = "; ".join(f"seed {_int(s)}: {c}" for s, c in zip(best["seed"], configs))
        not_last = int((best["selected_is_last"] == False).sum()) if "selected_is_last" in best else 0  # noqa: E712
        rows.append(dict(table=table, model=model, model_size=best["model_size"].iloc[0], task=task,
                         k=None if kk == -1 else int(kk), method=best["method"].iloc[0], mode=mode,
                         metric=best["metric"].iloc[0], numerics=_joined(best.get("numerics", [])),
                         selection=_joined(best.get("selection", [])), n_configs=g["config"].nunique(dropna=False),
                         n_seeds=len(test), n_runs=len(g), best_config=best_config,
                         dev_mean=best["dev"].astype(float).mean(), test_mean=test.mean(),
                         test_std=test.std() if len(test) > 1 else np.nan,  # numpy ddof=0, as gather_result.py
                         selected_not_last=not_last,
                         selected_steps=", ".join(f"{_int(a)}/{_int(b)}" for a, b in
                                                  zip(best["selected_step"], best["last_eval_step"]))
                         if "selected_step" in best else "",
                         peak_memory_gib=best["peak_memory_gib"].max() if "peak_memory_gib" in best else np.nan,
                         peak_memory_source=_joined(best.get("peak_memory_source", [])),
                         median_step_time_s=_median(best.get("median_step_time_s", [])),
                         first_step_time_s=_median(best.get("first_step_time_s", [])),
                         device_hours=g["device_hours"].astype(float).sum(min_count=1)
                         if "device_hours" in g else np.nan))
    return pd.DataFrame(rows)


def verdict(diff: float, paper_std: float, memory_ratio: float) -> tuple[float, str]:
    """(the score tolerance, the verdict) of a cell: see the module docstring."""
    tol = max(SCORE_TOLERANCE, paper_std) if not pd.isna(paper_std) else SCORE_TOLERANCE
    if pd.isna(diff):
        return tol, "no paper number"
    # + 1e-9: decimal figures have no exact binary form (91.7 - 90.5 = 1.2000000000000028 > 1.2)
    ok = abs(diff) <= tol + 1e-9 and (pd.isna(memory_ratio) or abs(memory_ratio - 1) <= MEMORY_TOLERANCE)
    return tol, "reproduced" if ok else "not reproduced"


def attach_paper(best: pd.DataFrame, paper: pd.DataFrame, memory: pd.DataFrame | None = None) -> pd.DataFrame:
    """Add paper_mean / paper_std / paper / diff, the paper's memory figure where it has one
    (Table 22), the tolerance and the verdict; rows the paper does not have stay blank."""
    if best.empty:
        return best
    memory = paper_memory() if memory is None else memory
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
        pm = np.nan
        if task_key(r["task"]) == MEMORY_TASK and r.get("peak_memory_source") == "nvidia-smi":
            mm = memory[(memory["model_size"] == r["model_size"])
                        & (memory["method"] == MEMORY_METHOD.get(r["mode"], "-"))]
            pm = mm["memory_gb"].iloc[0] if len(mm) else np.nan
        ratio = r["peak_memory_gib"] / pm if not pd.isna(pm) and not pd.isna(r.get("peak_memory_gib")) else np.nan
        diff = r["test_mean"] - pv if not pd.isna(pv) else np.nan
        tol, v = verdict(diff, ps, ratio)
        out.append({**r.to_dict(), "ours": _fmt(r["test_mean"], r["test_std"], r["n_seeds"]),
                    "paper_mean": pv, "paper_std": ps,
                    "paper": "" if pd.isna(pv) else (f"{pv:.1f} ({ps:.1f})" if not pd.isna(ps) else f"{pv:.1f}"),
                    "diff": diff, "tolerance": tol, "paper_memory_gb": pm, "memory_ratio": ratio, "verdict": v,
                    "paper_note": "" if p is None or pd.isna(p["note"]) else p["note"]})
    return pd.DataFrame(out)


MEMORY_COLUMNS = ["model", "model_size", "method", "task", "world_size", "device", "dtype", "numerics", "n_runs",
                  "peak_gpu_used_gib", "peak_allocated_gib", "peak_reserved_gib", "peak_rss_gib", "paper_method",
                  "paper_gpus", "paper_memory_gb", "memory_ratio", "memory_verdict"]


def memory_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Peak memory per (model, method, task, world size, device, dtype, numerics), beside Table 22;
    memory_verdict: within 5% of the paper's figure (nvidia-smi figures only)."""
    mem = runs[runs["has_memory_log"] == True].copy()  # noqa: E712
    if mem.empty:
        return pd.DataFrame(columns=MEMORY_COLUMNS)
    paper = paper_memory()
    mem["numerics"] = mem["numerics"] if "numerics" in mem else None
    rows = []
    keys = ["model_name", "model_size", "mode", "task", "world_size", "device", "dtype", "numerics"]
    for key, g in mem.groupby(keys, dropna=False):
        d = dict(zip(keys, key))
        p = paper[(paper["model_size"] == d["model_size"]) & (paper["method"] == MEMORY_METHOD.get(d["mode"], "-"))]
        gib = lambda col: g[col].max() / 2**30 if g[col].notna().any() else np.nan  # noqa: E731
        gpu = g["peak_gpu_used_mib"].max() / 1024 if g["peak_gpu_used_mib"].notna().any() else np.nan
        pm = p["memory_gb"].iloc[0] if len(p) else np.nan
        ratio = gpu / pm if not pd.isna(pm) and not pd.isna(gpu) else np.nan
        if pd.isna(pm):
            mv = "" if not len(p) else "no paper figure"
        elif pd.isna(ratio):
            mv = "not comparable (no nvidia-smi figure)"
        else:
            mv = "reproduced" if abs(ratio - 1) <= MEMORY_TOLERANCE else "not reproduced"
        rows.append(dict(model=d["model_name"], model_size=d["model_size"], method=g["method"].iloc[0],
                         task=d["task"], world_size=d["world_size"], device=d["device"], dtype=d["dtype"],
                         numerics=d["numerics"], n_runs=len(g), peak_gpu_used_gib=gpu,
                         peak_allocated_gib=gib("peak_allocated_bytes"), peak_reserved_gib=gib("peak_reserved_bytes"),
                         peak_rss_gib=gib("peak_rss_bytes"),
                         paper_method=p["method"].iloc[0] if len(p) else "",
                         paper_gpus=p["gpus"].iloc[0] if len(p) else np.nan,
                         paper_memory_gb=pm, memory_ratio=ratio, memory_verdict=mv))
    return pd.DataFrame(rows, columns=MEMORY_COLUMNS)


WALLCLOCK_COLUMNS = ["model", "model_size", "method", "task", "batch_size", "world_size", "device", "numerics",
                     "n_runs", "median_step_time_s", "first_step_time_s", "paper_step_time_s", "paper_gpus",
                     "ratio_to_paper"]


def wallclock_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Time per step beside Table 23: the median over the runs of each run's median step time
    without step 1 (compilation and warm-up), and step 1 alone (the median of the runs')."""
    t = runs[runs["median_step_time_s"].notna() & runs["mode"].notna()].copy() \
        if "median_step_time_s" in runs else runs.iloc[0:0]
    if t.empty:
        return pd.DataFrame(columns=WALLCLOCK_COLUMNS)
    paper = pd.read_csv(os.path.join(HERE, "paper_wallclock.csv"))
    t["eff_bs"] = t["batch_size"].fillna(0).astype(int) * t["gradient_accumulation_steps"].fillna(1).astype(int)
    rows = []
    for (model, size, mode, task, bs, ws, dev, num), g in t.groupby(
            ["model_name", "model_size", "mode", "task", "eff_bs", "world_size", "device", "numerics"], dropna=False):
        kind = "FT" if str(mode).startswith("ft") else "MeZO" if str(mode).startswith("mezo") else None
        p = paper[(paper["model_size"] == size) & (paper["method"] == kind) & (paper["batch_size"] == bs)]
        ours = _median(g["median_step_time_s"])
        pv = p["step_time_s"].iloc[0] if len(p) else np.nan
        rows.append(dict(model=model, model_size=size, method=g["method"].iloc[0], task=task, batch_size=bs,
                         world_size=ws, device=dev, numerics=num, n_runs=len(g), median_step_time_s=ours,
                         first_step_time_s=_median(g["first_step_time_s"]), paper_step_time_s=pv,
                         paper_gpus=p["gpus"].iloc[0] if len(p) else np.nan,
                         ratio_to_paper=ours / pv if not pd.isna(pv) else np.nan))
    return pd.DataFrame(rows, columns=WALLCLOCK_COLUMNS)

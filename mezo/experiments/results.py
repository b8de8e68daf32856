"""Read every run's JSON logs under a results folder, tolerating partial, killed and corrupt runs.

A run folder is any folder holding one of the files below. Each run becomes one flat record
(one row of all_results.csv); whatever could not be read is listed in `problems`.
"""
from __future__ import annotations

import json
import os
import re

FILES = ("experiment_config.json", "run_config.json", "training_metrics.json", "memory_log.json")
METRICS = ("accuracy", "f1", "em")
METHOD_NAMES = {"mezo": "MeZO", "mezo_lora": "MeZO (LoRA)", "mezo_prefix": "MeZO (prefix)", "ft": "FT",
                "ft_lora": "FT (LoRA)", "ft_prefix": "FT (prefix)", "zero_shot": "Zero-shot", "icl": "ICL",
                "linear_probe": "LP"}


def task_key(name) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name or "").lower())


def model_size(name: str | None) -> str:
    """'facebook/opt-13b' -> '13B', 'opt-1.3b' -> '1.3B', 'roberta-large' -> '350M', 'SmolLM2-135M' -> '135M'."""
    if not name:
        return ""
    if "roberta-large" in name.lower():
        return "350M"
    m = re.search(r"(\d+(?:\.\d+)?)\s*([bBmM])(?![a-zA-Z])", os.path.basename(name.rstrip("/")))
    return f"{m.group(1)}{m.group(2).upper()}" if m else ""


def read_json(path: str):
    """(data, problem): problem is None, 'missing' or a short reason."""
    if not os.path.exists(path):
        return None, "missing"
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f), None
    except (OSError, ValueError) as e:
        return None, f"corrupt ({type(e).__name__}: {str(e)[:80]})"


def find_runs(results_dir: str) -> list[str]:
    found = []
    for root, dirs, files in os.walk(results_dir):
        dirs.sort()
        if any(f in files for f in FILES):
            found.append(root)
    return found


def _mode(args: dict) -> str:
    if args.get("zero_shot"):
        return "zero_shot"
    if args.get("icl"):
        return "icl"
    trainer = args.get("trainer") or "mezo"
    if trainer == "linear_probe":
        return "linear_probe"
    base = "ft" if trainer == "ft" else "mezo"
    return base + ("_lora" if args.get("use_lora") else "_prefix" if args.get("prefix_tuning") else "")


def _pct(metrics: dict | None) -> dict:
    """Metrics as percentages (fractions in [0, 1] are scaled by 100, as the paper reports)."""
    out = {}
    for k, v in (metrics or {}).items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = 100.0 * v if abs(v) <= 1.0 else float(v)
    return out


def _main_metric(*dicts) -> str | None:
    for name in METRICS:
        if any(name in (d or {}) for d in dicts):
            return name
    return None


def load_run(run_dir: str, results_dir: str) -> dict:
    rel = os.path.relpath(run_dir, results_dir)
    rec = {"run_id": rel.replace(os.sep, "__"), "run_dir": rel, "problems": []}
    data = {}
    for name in FILES:
        d, problem = read_json(os.path.join(run_dir, name))
        data[name] = d if isinstance(d, dict) else None
        if problem and not (problem == "missing" and name == "memory_log.json"):
            rec["problems"].append(f"{name}: {problem}")
    exp, cfg, met = data["experiment_config.json"] or {}, data["run_config.json"] or {}, data["training_metrics.json"]
    args = {**cfg, **(exp.get("args") or {})}
    rec.update(task=exp.get("task") or args.get("task_name") or args.get("dataset"),
               model_name=exp.get("model_name") or args.get("model_name"),
               mode=exp.get("mode") or (_mode(args) if args else None))
    family = args.get("model_family") or ("roberta" if "roberta" in str(rec["model_name"]).lower() else "causal")
    rec.update(family=family, model_size=model_size(rec["model_name"]), method=METHOD_NAMES.get(rec["mode"], rec["mode"]),
               k=args.get("k"), seed=args.get("data_seed", args.get("train_set_seed", args.get("seed"))),
               learning_rate=args.get("learning_rate"), zo_eps=args.get("zo_eps"), batch_size=args.get("batch_size"),
               gradient_accumulation_steps=args.get("gradient_accumulation_steps") or 1,
               weight_decay=args.get("weight_decay"), max_steps=args.get("max_steps"),
               world_size=exp.get("world_size"), device=exp.get("device"), dtype=exp.get("dtype") or args.get("dtype"),
               num_params=exp.get("num_params"), num_trainable_params=exp.get("num_trainable_params"))
    rec["config"] = "_".join(f"{k}{v}" for k, v in (("lr", rec["learning_rate"]), ("eps", rec["zo_eps"]),
                                                   ("bs", rec["batch_size"]), ("wd", rec["weight_decay"])) if v is not None)
    _add_metrics(rec, met)
    _add_memory(rec, data["memory_log.json"])
    if not rec["task"] or not rec["mode"]:
        rec["problems"].append("cannot tell task/mode (no readable config)")
    rec["problems"] = "; ".join(rec["problems"])
    return rec


def _add_metrics(rec: dict, met: dict | None) -> None:
    met = met if isinstance(met, dict) else {}
    rec["status"] = met.get("status") or ("missing" if not met else "unknown")
    steps = met.get("steps") or []
    rec["num_steps_logged"] = len(steps)
    rec["last_step"] = steps[-1].get("step") if steps and isinstance(steps[-1], dict) else None
    rec["total_time_s"] = met.get("total_time_s")
    rec["mean_step_time_s"] = met.get("mean_step_time_s")
    final = met.get("final") if isinstance(met.get("final"), dict) else None
    zero = met.get("zero_shot") if isinstance(met.get("zero_shot"), dict) else None
    dev = test = None
    rec["result_from"] = ""
    if final:
        dev, test = _pct(final.get("dev")), _pct(final.get("test"))
        rec["best_dev_step"], rec["result_from"] = final.get("best_dev_step"), "final"
    elif met.get("evals"):  # in progress or killed: best evaluation so far
        evals = [e for e in met["evals"] if isinstance(e, dict)]
        name = _main_metric(*[_pct(e.get("dev")) for e in evals])
        if evals and name:
            best = max(evals, key=lambda e: _pct(e.get("dev")).get(name, float("-inf")))
            dev, test = _pct(best.get("dev")), _pct(best.get("test"))
            rec["best_dev_step"], rec["result_from"] = best.get("step"), "best_eval_so_far"
    if (not test) and zero:
        test, rec["result_from"] = _pct(zero.get("test")), "zero_shot"
    rec["metric"] = _main_metric(test, dev)
    rec["dev"] = (dev or {}).get(rec["metric"]) if rec["metric"] else None
    rec["test"] = (test or {}).get(rec["metric"]) if rec["metric"] else None
    rec["zero_shot_test"] = _pct((zero or {}).get("test")).get(rec["metric"]) if zero and rec["metric"] else None


def _add_memory(rec: dict, mem: dict | None) -> None:
    peak = (mem or {}).get("peak") or {}
    for key in ("rss_bytes", "allocated_bytes", "reserved_bytes", "gpu_used_mib"):
        rec[f"peak_{key}"] = peak.get(key)
    rec["has_memory_log"] = bool(mem)


def load_all(results_dir: str) -> list[dict]:
    return [load_run(d, results_dir) for d in find_runs(results_dir)]


def load_curves(results_dir: str, rec: dict) -> tuple[list, list]:
    """(steps, memory samples) of one run, [] where unreadable."""
    run_dir = os.path.join(results_dir, rec["run_dir"])
    met, _ = read_json(os.path.join(run_dir, "training_metrics.json"))
    mem, _ = read_json(os.path.join(run_dir, "memory_log.json"))
    steps = [s for s in ((met or {}).get("steps") or []) if isinstance(s, dict)] if isinstance(met, dict) else []
    samples = [s for s in ((mem or {}).get("samples") or []) if isinstance(s, dict)] if isinstance(mem, dict) else []
    return steps, samples

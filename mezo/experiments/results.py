"""Read every run's JSON logs under a results folder, tolerating partial, killed and corrupt runs.

A run folder is any folder holding one of the files below. Each run becomes one flat record
(one row of runs.csv); whatever could not be read is listed in `problems`.

A run's result is its selected evaluation (training_metrics.json `final.selected`, see
mezo/selection.py); a run that predates it, or has not finished, is selected from its `evals`
by the same rule (its --selection_metric, else the family's: dev loss, dev metric for RoBERTa;
without recorded dev losses, the last evaluation, which is what such runs reported).
Timing: `median_step_time_s` leaves out step 1 (it carries one-off compilation and warm-up),
reported alone as `first_step_time_s`, and steps replayed from a trajectory (no time of their
own). `device_hours` = total_time_s x world_size / 3600: total_time_s is the wall time the
metrics file records from the end of model loading to its last write (training and
evaluations; a resumed run: its last segment only, flagged by `resumed`).
"""
from __future__ import annotations

import json
import os
import re
import statistics

from mezo import selection

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
               numerics=numerics(exp), num_params=exp.get("num_params"),
               num_trainable_params=exp.get("num_trainable_params"), train_seed=args.get("seed"))
    rec["config"] = "_".join(f"{k}{v}" for k, v in (("lr", rec["learning_rate"]), ("eps", rec["zo_eps"]),
                                                   ("bs", rec["batch_size"]), ("wd", rec["weight_decay"])) if v is not None)
    rule = args.get("selection_metric")
    rule = rule if rule in selection.RULES else selection.resolve("auto", "mlm" if family == "roberta" else "causal")
    _add_metrics(rec, met, rule)
    _add_memory(rec, data["memory_log.json"])
    if not rec["task"] or not rec["mode"]:
        rec["problems"].append("cannot tell task/mode (no readable config)")
    rec["problems"] = "; ".join(rec["problems"])
    return rec


def numerics(exp: dict) -> str | None:
    """The run's numerics (experiment_config.json "numerics"; older runs: "master" when they kept
    fp32 master weights, else "reference", the weights updated in place)."""
    if not exp:
        return None
    if exp.get("numerics"):
        return exp["numerics"]
    master = exp.get("master_weights", (exp.get("args") or {}).get("use_master"))
    return None if master is None else "master" if master else "reference"


def _step_times(steps: list) -> tuple[float | None, float | None]:
    """(median step time without step 1, step 1's time); replayed steps have no time of their own."""
    timed = [s for s in steps if isinstance(s, dict) and not s.get("replayed")
             and isinstance(s.get("step_time_s"), (int, float))]
    first = next((float(s["step_time_s"]) for s in timed if s.get("step") == 1), None)
    rest = [float(s["step_time_s"]) for s in timed if s.get("step") != 1]
    return (statistics.median(rest) if rest else None), first


def _add_metrics(rec: dict, met: dict | None, rule: str) -> None:
    met = met if isinstance(met, dict) else {}
    rec["status"] = met.get("status") or ("missing" if not met else "unknown")
    steps = met.get("steps") or []
    rec["num_steps_logged"] = len(steps)
    rec["last_step"] = steps[-1].get("step") if steps and isinstance(steps[-1], dict) else None
    rec["total_time_s"] = met.get("total_time_s")
    rec["mean_step_time_s"] = met.get("mean_step_time_s")
    rec["median_step_time_s"], rec["first_step_time_s"] = _step_times(steps)
    rec["resumed"] = len(met.get("resumed") or [])
    ws = rec.get("world_size")
    rec["device_hours"] = rec["total_time_s"] * ws / 3600 if isinstance(rec["total_time_s"], (int, float)) \
        and isinstance(ws, int) else None
    final = met.get("final") if isinstance(met.get("final"), dict) else None
    zero = met.get("zero_shot") if isinstance(met.get("zero_shot"), dict) else None
    evals = [e for e in met.get("evals") or [] if isinstance(e, dict)]
    sel = last = None
    rec["result_from"], rec["selection"] = "", None
    if final and isinstance(final.get("selected"), dict):
        sel, last, rec["selection"], rec["result_from"] = final["selected"], final.get("last"), \
            final["selected"].get("criterion"), "final"
    elif evals:  # a run older than final.selected (it reported its last evaluation), or not finished
        sel, rec["selection"] = selection.select(evals, rule)
        last = evals[-1]
        rec["result_from"] = "evals" if final else "evals_so_far"
    dev, test = _pct((sel or {}).get("dev")), _pct((sel or {}).get("test"))
    if (not test) and zero:
        test, rec["result_from"] = _pct(zero.get("test")), "zero_shot"
    rec["metric"] = _main_metric(test, dev)
    rec["dev"] = (dev or {}).get(rec["metric"]) if rec["metric"] else None
    rec["test"] = (test or {}).get(rec["metric"]) if rec["metric"] else None
    rec["dev_loss"] = (sel or {}).get("dev_loss")
    rec["n_evals"] = len(evals)
    rec["selected_step"] = (sel or {}).get("step")
    rec["last_eval_step"] = (last or {}).get("step")
    rec["last_eval_test"] = _pct((last or {}).get("test")).get(rec["metric"]) if last and rec["metric"] else None
    rec["selected_is_last"] = None if sel is None or last is None else sel.get("step") == last.get("step")
    rec["zero_shot_test"] = _pct((zero or {}).get("test")).get(rec["metric"]) if zero and rec["metric"] else None


def _add_memory(rec: dict, mem: dict | None) -> None:
    peak = (mem or {}).get("peak") or {}
    for key in ("rss_bytes", "allocated_bytes", "reserved_bytes", "gpu_used_mib"):
        rec[f"peak_{key}"] = peak.get(key)
    rec["has_memory_log"] = bool(mem)
    # one figure per run: the device's as nvidia-smi sees it (the paper's Table 22), else torch's
    # reserved memory, else the process RSS (CPU)
    for key, scale, source in (("gpu_used_mib", 1 / 1024, "nvidia-smi"), ("reserved_bytes", 2**-30, "torch reserved"),
                               ("rss_bytes", 2**-30, "RSS")):
        if isinstance(peak.get(key), (int, float)):
            rec["peak_memory_gib"], rec["peak_memory_source"] = peak[key] * scale, source
            break
    else:
        rec["peak_memory_gib"], rec["peak_memory_source"] = None, None


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

"""Which evaluation of a run is its result: the one the reference would have kept.

The reference keeps one model per run and reports its test score:
  * OPT (princeton-nlp/MeZO large_models/mezo.sh: `--load_best_model_at_end`, Hugging Face
    Trainer): the evaluation with the lowest dev loss (metric_for_best_model defaults to "loss",
    greater_is_better to False; `_determine_best_metric` takes a new best only when strictly
    lower, so a tie keeps the earliest);
  * RoBERTa (medium_models/src/trainer.py, `default_dev_objective`): the highest dev metric
    (accuracy; strictly higher, so a tie keeps the earliest).
The candidates are the evaluations every --eval_steps and after the last step. The evaluation of
the model as loaded (`zero_shot`) is not one: neither Trainer evaluates at step 0. With one
evaluation (no intermediate ones, as the paper's 30B/66B runs) that one is the result.

Rules (`--selection_metric`): "dev_loss", "dev_metric", "last"; "auto" is dev_metric for masked
LMs (RoBERTa) and dev_loss otherwise. The criterion recorded names what decided: "dev_loss",
"dev_<metric>" (dev_accuracy, dev_f1), or "last" (the rule, or no evaluation had the value).

Plain Python (no torch): the analysis applies it to runs that predate `final.selected`.
"""
from __future__ import annotations

import math

RULES = ("dev_loss", "dev_metric", "last")
FLAG_CHOICES = ("auto",) + RULES


def resolve(flag: str, task_family: str) -> str:
    """The rule of `--selection_metric flag` for a task family ("mlm" | "causal")."""
    if flag == "auto":
        return "dev_metric" if task_family == "mlm" else "dev_loss"
    if flag not in RULES:
        raise ValueError(f"--selection_metric must be one of {', '.join(FLAG_CHOICES)} (got {flag!r})")
    return flag


def _number(v) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def _headline_metric(e: dict) -> tuple[str | None, float | None]:
    """(name, value) of the first dev metric of an evaluation: the task's headline metric."""
    dev = e.get("dev") or {}
    if not isinstance(dev, dict) or not dev:
        return None, None
    name = next(iter(dev))
    return name, _number(dev[name])


def select(evals: list, rule: str) -> tuple[dict | None, str]:
    """(the selected evaluation, the criterion that chose it) among `evals` (records with
    "step", "dev", "test" and, since dev losses are recorded, "dev_loss"); (None, rule) when
    there is none. An evaluation without the rule's value (no dev set, a non-finite loss, a
    run older than the dev loss) is no candidate; when none is, the last evaluation is."""
    evals = [e for e in evals or [] if isinstance(e, dict)]
    if not evals:
        return None, rule
    if rule in ("dev_loss", "dev_metric"):
        best, best_v, name = None, None, None
        for e in evals:
            if rule == "dev_loss":
                v, key = _number(e.get("dev_loss")), "dev_loss"
            else:
                key, v = _headline_metric(e)
            if v is None:
                continue
            if best is None or (v < best_v if rule == "dev_loss" else v > best_v):  # strict: ties keep the earliest
                best, best_v, name = e, v, key
        if best is not None:
            return best, name if rule == "dev_loss" else f"dev_{name}"
    return evals[-1], "last"


def final_record(evals: list, rule: str) -> dict:
    """training_metrics.json's `final`: `dev` / `test` (and `dev_loss`) of the selected
    evaluation, which is what the run reports; `selected` = {step, criterion, dev, test,
    dev_loss}; `last` = {step, dev, test, dev_loss} of the last evaluation."""
    sel, criterion = select(evals, rule)
    last = evals[-1] if evals else None

    def part(e):
        return {"step": e.get("step"), "dev": e.get("dev") or {}, "test": e.get("test") or {},
                "dev_loss": e.get("dev_loss")}
    return {"dev": (sel or {}).get("dev") or {}, "test": (sel or {}).get("test") or {},
            "dev_loss": (sel or {}).get("dev_loss"),
            "selected": {**part(sel), "criterion": criterion} if sel else None,
            "last": part(last) if last else None}


def why(final: dict, n_evals: int) -> str:
    """Which evaluation the result is and why: "step 200: lowest dev loss 0.4321 of 3
    evaluations; the last (step 300) has test accuracy 0.6400"."""
    sel, last = final.get("selected"), final.get("last")
    if not sel:
        return "no evaluation"
    c = sel["criterion"]
    if n_evals == 1:
        return f"step {sel['step']}: the only evaluation"
    if c == "dev_loss":
        reason = f"lowest dev loss {sel['dev_loss']:.4f}"
    elif c.startswith("dev_"):
        reason = f"highest dev {c[4:]} {sel['dev'][c[4:]]:.4f}"
    else:
        reason = "the last"
    text = f"step {sel['step']}: {reason} of {n_evals} evaluations"
    if last and last["step"] != sel["step"]:
        scores = ", ".join(f"{k} {v:.4f}" for k, v in last["test"].items())
        text += f"; the last (step {last['step']}) has test {scores}"
    return text

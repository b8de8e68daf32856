"""The end of a run, shared by every trainer: save what it trained, write the final record,
print the headline."""
from __future__ import annotations

import os

from mezo import peft_modes, selection
from mezo.telemetry import apply_umask

# what finish() saves (safetensors and its peft writers create files 0600: opened to the umask)
SAVED = ("model", "adapter_model.safetensors", "adapter_config.json", "prefix_model.safetensors", "prefix_config.json",
         "README.md")


def headline(m: dict) -> str:
    """"accuracy: 0.8125" / "f1: 0.4210 (em 0.3000)": the first key is the task's metric."""
    if not m:
        return "n/a"
    (k, v), rest = next(iter(m.items())), list(m.items())[1:]
    return f"{k}: {v:.4f}" + (f" ({', '.join(f'{a} {b:.4f}' for a, b in rest)})" if rest else "")


def record_final(metrics, rule: str, main: bool, label: str = "final", **extra) -> dict:
    """Write `final` (mezo.selection.final_record: the selected evaluation, and the last) with
    status "completed"; print "final test <metric> (<which evaluation and why>)" (a baseline:
    "<label> test <metric>")."""
    evals = metrics.data["evals"]
    final = {**selection.final_record(evals, rule), **extra}
    metrics.data["final"] = final
    metrics.save("completed")
    if main and evals:
        reason = f" ({selection.why(final, len(evals))})" if label == "final" else ""  # a baseline: one evaluation
        print(f"{label} test {headline(final['test'])}{reason}", flush=True)
    return final


def finish(cfg, model, tok, metrics, main: bool) -> dict:
    """Save (adapters / prefixes / --save_model: the full model), write the final record (the
    evaluation --selection_metric selects, and the last one), print the result. Shared by the
    training trainers."""
    peft_modes.save(cfg.peft, cfg.output.dir, cfg.output.save_model, cfg.model.name, model, tok, main)
    if main:
        apply_umask(*(os.path.join(cfg.output.dir, name) for name in SAVED))
    record_final(metrics, cfg.train.selection_metric, main)
    return metrics.data

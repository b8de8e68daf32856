"""The end of a run, shared by every trainer: save what it trained, write the final record,
print the headline."""
from __future__ import annotations

import os

from mezo import peft_modes
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


def finish(cfg, model, tok, metrics, main: bool) -> dict:
    """Save (adapters / prefixes / --save_model: the full model), write the final record (last
    evaluation, best dev step), print the result. Shared by every trainer."""
    peft_modes.save(cfg.peft, cfg.output.dir, cfg.output.save_model, cfg.model.name, model, tok, main)
    if main:
        apply_umask(*(os.path.join(cfg.output.dir, name) for name in SAVED))
    evals = metrics.data["evals"]
    best = max(evals, key=lambda e: next(iter(e["dev"].values()), 0.0)) if evals and evals[0]["dev"] else None
    metrics.data["final"] = {"dev": evals[-1]["dev"] if evals else {}, "test": evals[-1]["test"] if evals else {},
                             "best_dev_step": best["step"] if best else None}
    metrics.save("completed")
    if main and evals:
        print(f"final test {headline(evals[-1]['test'])}", flush=True)
    return metrics.data

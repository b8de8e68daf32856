"""Zero-shot and in-context-learning (ICL) baselines: evaluate, write the logs, exit.

--zero_shot: the test set (and dev, when there is one) scored with the model as loaded.
--icl --num_demos N: every test sample gets N gold demonstrations from the train split in front
(the reference's formatting and per-sample demo sets, mezo.splits.icl_samples); the whole input
is cut from the left to the model's context length (--max_length capped), keeping the first
token, as the reference's encode_prompt does.
"""
from __future__ import annotations

import json
import os

from mezo.evaluation import evaluate, evaluate_with_loss
from mezo.results import record_final
from mezo.splits import icl_samples
from mezo.telemetry import log


def train(run) -> dict:
    """--zero_shot / --icl over a mezo.context.Run: evaluate, write the logs and predictions."""
    task, model, enc, splits, train_rows, metrics, main = (run.task, run.model, run.enc, run.splits, run.train_rows,
                                                           run.metrics, run.main)
    t = run.cfg.train
    name = t.trainer  # "zero_shot" | "icl"
    icl = name == "icl"
    test = splits.test
    if icl:
        if not train_rows:
            raise ValueError(f"--icl: task {task.name} has no train rows to draw demonstrations from")
        test = icl_samples(task, train_rows, splits.test, t.num_demos)
        lens = [len(enc(s)[0]) for s in test]
        log.info("icl: %d demos per test sample, prompts %d-%d tokens (cap %d)", t.num_demos, min(lens),
                 max(lens), enc.max_length)
    preds: list = []
    dev, dev_loss = evaluate_with_loss(model, enc, splits.dev if not icl else [], t.eval_batch_size, task.train_loss)
    rec = {"step": 0, "dev": dev, "test": evaluate(model, enc, test, t.eval_batch_size, predictions=preds),
           "dev_loss": dev_loss}
    metrics.data[name] = {"test": rec["test"], "num_demos": t.num_demos if icl else 0}
    if name == "zero_shot":
        metrics.data["zero_shot"] = {"test": rec["test"]}
    metrics.eval(rec)
    if main:
        with open(os.path.join(run.cfg.output.dir, "predictions.jsonl"), "w", encoding="utf-8") as f:
            for s, p in preds:
                f.write(json.dumps({"prompt_tail": s.prompt[-200:], "prediction": p,
                                    "gold": s.answers if s.answers is not None else s.gold_ids}) + "\n")
    # one evaluation: it is the result
    record_final(metrics, t.selection_metric, main, label=name.replace("_", "-"), baseline=name)
    return metrics.data

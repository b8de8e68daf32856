"""Linear probing (`--trainer linear_probe`, the paper's LP baseline): features from the frozen
model (causal LMs: the last-token hidden state of the prompt, what the LM head reads; masked
LMs: the hidden state at the <mask> token, what the MLM head reads), a multinomial
logistic regression on the training set (scikit-learn; LogisticRegressionCV picks the L2
strength by cross-validation unless --lp_C is given), evaluated with the same accuracy on the
dev and test sets. Results go to training_metrics.json's evals (with the probe's dev log-loss as
the dev loss) and final.

Under FSDP2 each rank extracts the features of every world-th batch (mezo.batches.rank_batches:
the same batches on any number of ranks), one all-reduce assembles the matrix, and rank 0 fits the classifier.
Needs a task whose candidates are fixed class labels (classification, not multiple choice).
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch

from mezo import distributed as D
from mezo.batches import rank_batches
from mezo.results import record_final
from mezo.scoring import _right_pad, causal_inputs
from mezo.telemetry import log


@torch.no_grad()
def features(model, enc, samples, batch_size: int) -> np.ndarray:
    """[len(samples), hidden] float64: the final hidden state at the prompt's last token (masked LMs: at
    its mask token)."""
    device = next(model.parameters()).device
    out = None
    mlm = getattr(enc, "family", "causal") == "mlm"
    for mine in rank_batches(list(range(len(samples))), batch_size):
        rows = mine or [0]
        if mlm:  # right-padded, the hidden state at each prompt's mask position
            encs = [enc.encode(samples[i]) for i in rows]
            ids, mask = _right_pad([e.prompt for e in encs], enc.pad_id)
            out_h = model(input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=True)
            pos = torch.tensor([e.mask_pos for e in encs])
            h = out_h.hidden_states[-1][torch.arange(len(encs)), pos.to(device)].double().cpu()
        else:  # left-padded, the hidden state at each prompt's last token
            seqs = [enc(samples[i])[0] for i in rows]
            out_h = model(**causal_inputs(model, seqs, enc.pad_id, keep=1), output_hidden_states=True)
            h = out_h.hidden_states[-1][:, -1].double().cpu()
        if out is None:
            out = torch.zeros((len(samples), h.shape[-1]), dtype=torch.float64)
        for j, i in enumerate(mine):
            out[i] = h[j]
    return D.all_reduce_sum(out).numpy()


def fit(X: np.ndarray, y: np.ndarray, C: float | None, max_iter: int):
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    folds = min(5, int(np.bincount(y).min())) if len(np.unique(y)) > 1 else 0
    if C is None and folds >= 2:
        clf = LogisticRegressionCV(Cs=10, cv=folds, max_iter=max_iter, random_state=0)
    else:
        clf = LogisticRegression(C=C or 1.0, max_iter=max_iter, random_state=0)
    model = make_pipeline(StandardScaler(), clf)
    model.fit(X, y)
    return model


def accuracy(clf, X, samples) -> dict:
    if not samples:
        return {}
    pred = clf.predict(X)
    return {"accuracy": float(np.mean([int(p) in s.gold_ids for p, s in zip(pred, samples)]))}


def log_loss(clf, X, samples) -> float | None:
    """The probe's training objective on `samples`: the mean negative log-probability (natural
    log) of each sample's label under the fitted classifier (a label it never saw: +inf)."""
    if not samples:
        return None
    proba = clf.predict_proba(X)
    col = {int(c): j for j, c in enumerate(clf.classes_)}
    p = [proba[i, col[s.label]] if s.label in col else 0.0 for i, s in enumerate(samples)]
    return float(np.mean([-math.log(x) if x > 0 else math.inf for x in p]))


def train(run) -> dict:
    """The linear-probe trainer over a mezo.context.Run."""
    model, enc, splits, metrics, main = run.model, run.enc, run.splits, run.metrics, run.main
    bs, probe = run.cfg.train.eval_batch_size, run.cfg.probe
    run.zero_shot()
    if any(len(s.candidates) != len(splits.train[0].candidates) for s in splits.train) or \
            any(s.label is None for s in splits.train):
        raise ValueError(f"--trainer linear_probe needs a classification task with fixed labels ({run.task.name} is not)")
    t0 = time.time()
    Xtr = features(model, enc, splits.train, bs)
    Xdev = features(model, enc, splits.dev, bs) if splits.dev else None
    Xte = features(model, enc, splits.test, bs)
    t_feat = time.time() - t0
    log.info("linear probe: features %s in %.1fs", Xtr.shape, t_feat)
    rec = {"step": 0, "dev": {}, "test": {}, "dev_loss": None}
    info = {}
    if main:
        y = np.array([s.label for s in splits.train])
        clf = fit(Xtr, y, probe.C, probe.max_iter)
        lr = clf[-1]
        info = {"C": float(np.atleast_1d(lr.C_)[0]) if hasattr(lr, "C_") else float(lr.C),
                "train_accuracy": accuracy(clf, Xtr, splits.train)["accuracy"],
                "num_features": int(Xtr.shape[1]), "feature_time_s": t_feat, "fit_time_s": time.time() - t0 - t_feat}
        rec = {"step": 0, "dev": accuracy(clf, Xdev, splits.dev) if Xdev is not None else {},
               "test": accuracy(clf, Xte, splits.test),
               "dev_loss": log_loss(clf, Xdev, splits.dev) if Xdev is not None else None}
        log.info("linear probe: C %.4g, train %.4f, dev %s, test %s", info["C"], info["train_accuracy"],
                 rec["dev"], rec["test"])
    metrics.data["linear_probe"] = info
    metrics.eval(rec)
    record_final(metrics, run.cfg.train.selection_metric, main)  # one evaluation: it is the result
    return metrics.data

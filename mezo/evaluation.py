"""Evaluation of a task's metric over a list of samples, split across ranks.

Under FSDP2 every rank must run the same number of forwards (each forward all-gathers), so
each rank takes every world-th sample and a rank that runs out repeats a dummy batch whose
predictions are ignored; the counts are summed with one all-reduce.
"""
from __future__ import annotations

import math

import torch

from mezo import distributed as D
from mezo.scoring import Encoder, predict


@torch.no_grad()
def evaluate(model, enc: Encoder, samples, batch_size: int) -> dict:
    if not samples:
        return {}
    r, w = D.rank(), D.world_size()
    mine = samples[r::w]
    n_batches = math.ceil(math.ceil(len(samples) / w) / batch_size)
    correct = 0
    for b in range(n_batches):
        batch = mine[b * batch_size:(b + 1) * batch_size]
        preds = predict(model, enc, batch or samples[:1])
        if batch:
            correct += sum(int(p == s.label) for p, s in zip(preds, batch))
    t = D.all_reduce_sum(torch.tensor([correct, len(mine)], dtype=torch.float64))
    return {"accuracy": float(t[0] / t[1])}

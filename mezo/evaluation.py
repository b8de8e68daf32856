"""Evaluation of a task's metric over a list of samples, split across ranks.

Classification / multiple choice: candidate scoring (mezo.scoring.predict), metric
{"accuracy"} (a prediction counts when it is in the sample's gold indices). Generation (samples
without candidates: SQuAD, DROP): greedy decoding with a KV cache (mezo.scoring.generate),
metrics {"f1", "em"} (SQuAD-normalised, max over the gold answers; the reference scores DROP
the same way). The first key is the task's headline metric.

Samples are sorted by prompt length (longest first, stable) so that a batch pads little, and cut
into batches at fixed places (mezo.batches.rank_batches): every batch, hence every prediction,
is the same on any number of ranks. Under FSDP2 every rank runs the same number of forwards
(a rank that runs out scores a dummy batch whose predictions are ignored); generation keeps
ranks in lockstep step by step. Per-sample metric values are assembled with one all-reduce
(one rank contributes each entry, so the sum is exact) and averaged with math.fsum.
"""
from __future__ import annotations

import math

import torch

from mezo import distributed as D
from mezo.batches import rank_batches
from mezo.scoring import Encoder, generate, predict, sample_metric


@torch.no_grad()
def evaluate(model, enc: Encoder, samples, batch_size: int, predictions: list | None = None) -> dict:
    """The task's metrics over `samples`; with `predictions` (a list), every (sample, prediction)
    pair, in the order of `samples`, is appended to it (on every rank)."""
    if not samples:
        return {}
    multi = D.world_size() > 1
    gen = not samples[0].candidates
    keys = ["f1", "em"] if gen else ["accuracy"]
    order = sorted(range(len(samples)), key=lambda i: -len(enc(samples[i])[0]))
    values = torch.zeros((len(samples), len(keys)), dtype=torch.float64)
    mine: dict[int, object] = {}
    for batch in rank_batches(order, batch_size):
        run = [samples[i] for i in batch] or samples[:1]
        preds = generate(model, enc, run, sync=D.sync_counts if multi else None) if gen else predict(model, enc, run)
        for i, p in zip(batch, preds):
            m = sample_metric(samples[i], p)
            values[i] = torch.tensor([m[k] for k in keys], dtype=torch.float64)
            mine[i] = p
    values = D.all_reduce_sum(values)
    if predictions is not None:
        found = {i: p for part in D.all_gather_objects(mine) for i, p in part.items()}
        predictions.extend((s, found[i]) for i, s in enumerate(samples))
    return {k: math.fsum(values[:, j].tolist()) / len(samples) for j, k in enumerate(keys)}

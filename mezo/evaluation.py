"""Evaluation of a task's metric over a list of samples, split across ranks.

Classification / multiple choice: candidate scoring (mezo.scoring.predict), metric
{"accuracy"} (a prediction counts when it is in the sample's gold indices). Generation (samples
without candidates: SQuAD, DROP): greedy decoding with a KV cache (mezo.scoring.generate),
metrics {"f1", "em"} (SQuAD-normalised, max over the gold answers; the reference scores DROP
the same way). The first key is the task's headline metric.

Samples are sorted by prompt length (longest first) so that a batch pads little. Under FSDP2
every rank must run the same number of forwards (each forward all-gathers), so each rank takes
every world-th sample and a rank that runs out repeats a dummy batch whose predictions are
ignored; generation keeps ranks in lockstep step by step; sums are reduced with one all-reduce.
"""
from __future__ import annotations

import math

import torch

from mezo import distributed as D
from mezo.scoring import Encoder, generate, predict, sample_metric


def _sync(finished: int, batch: int) -> tuple[int, int]:
    t = D.all_reduce_sum(torch.tensor([finished, batch], dtype=torch.float64))
    return int(t[0]), int(t[1])


@torch.no_grad()
def evaluate(model, enc: Encoder, samples, batch_size: int, predictions: list | None = None) -> dict:
    """The task's metrics over `samples`; with `predictions` (a list), this rank's
    (sample, prediction) pairs are appended to it."""
    if not samples:
        return {}
    r, w = D.rank(), D.world_size()
    gen = not samples[0].candidates
    keys = ["f1", "em"] if gen else ["accuracy"]
    mine = sorted(samples[r::w], key=lambda s: -len(enc(s)[0]))
    n_batches = math.ceil(math.ceil(len(samples) / w) / batch_size)
    sums = torch.zeros(len(keys) + 1, dtype=torch.float64)
    for b in range(n_batches):
        batch = mine[b * batch_size:(b + 1) * batch_size]
        run = batch or samples[:1]
        preds = generate(model, enc, run, sync=_sync if w > 1 else None) if gen else predict(model, enc, run)
        for s, p in zip(batch, preds):
            m = sample_metric(s, p)
            sums[:-1] += torch.tensor([m[k] for k in keys], dtype=torch.float64)
            sums[-1] += 1
            if predictions is not None:
                predictions.append((s, p))
    t = D.all_reduce_sum(sums)
    return {k: float(t[i] / t[-1]) for i, k in enumerate(keys)}

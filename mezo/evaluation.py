"""Evaluation of a task's metric, and of its training loss, over a list of samples, split across ranks.

Classification / multiple choice: candidate scoring (mezo.scoring.scores, argmax), metric
{"accuracy"} (a prediction counts when it is in the sample's gold indices). Generation (samples
without candidates: SQuAD, DROP): greedy decoding with a KV cache (mezo.scoring.generate),
metrics {"f1", "em"} (SQuAD-normalised, max over the gold answers; the reference scores DROP
the same way). The first key is the task's headline metric.

Samples are sorted by prompt length (longest first, stable) so that a batch pads little, and cut
into batches at fixed places (mezo.batches.rank_batches): every batch, hence every prediction,
is the same on any number of ranks. On CPU a scored batch is further cut into forwards of rows
of near-equal length (`split_for_padding`, a function of the batch alone, so the same on any
number of ranks): a forward's cost there is its padded tokens, and a batch of 16 RTE prompts
padded to its longest was 59% padding. Under FSDP2 every rank runs the same number of forwards
(a rank that runs out scores a dummy batch whose predictions are ignored); generation keeps
ranks in lockstep step by step. Per-sample metric values are assembled with one all-reduce
(one rank contributes each entry, so the sum is exact) and averaged with math.fsum.

The dev loss (`evaluate_with_loss`) is the training objective of the task on the samples
(mezo.scoring.example_losses: "classification", the cross-entropy over the candidate scores,
comes from the same forwards as the predictions; "lm", the teacher-forced loss of the gold
continuation, takes one more pass over the same batches), assembled per sample like the metric
and reduced as the Hugging Face Trainer computes `eval_loss` in the reference (`hf_eval_loss`).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mezo import distributed as D
from mezo.batches import rank_batches
from mezo.scoring import Encoder, example_losses, generate, sample_metric, scores, scored_rows

# transformers.TrainingArguments.per_device_eval_batch_size's default; the reference's scripts
# (large_models/mezo.sh, finetune.sh) do not set it, and its runs use one process
HF_EVAL_BATCH = 8


def hf_eval_loss(values, counts, batch: int = HF_EVAL_BATCH) -> float:
    """The Trainer's eval_loss over per-sample losses in dataset order (evaluation_loop: each
    batch's loss, repeated batch-size times, then the mean over the dataset's samples): batches
    of `batch` consecutive samples, each worth sum(values) / sum(counts) (the per-sample mean
    for "classification", whose counts are 1; the mean over the batch's gold tokens for "lm",
    the reference's CrossEntropyLoss over the option tokens) weighted by its number of samples.
    Sums are math.fsum: the result depends on the values alone, not on how ranks computed them."""
    n = len(values)
    parts = [len(values[i:i + batch]) * (math.fsum(values[i:i + batch]) / max(math.fsum(counts[i:i + batch]), 1.0))
             for i in range(0, n, batch)]
    return math.fsum(parts) / n


# The cost of one more forward on CPU, in padded tokens of the default model: the per-forward
# work (Python, one pass over the weights) that splitting a batch adds (BENCHMARKS.md 3.1)
CPU_FORWARD_OVERHEAD_TOKENS = 32


def split_for_padding(rows: list[list[int]], overhead: int = CPU_FORWARD_OVERHEAD_TOKENS) -> list[int]:
    """Where to cut a batch of samples, in order, into forwards: `rows[i]` holds the lengths of
    sample i's rows (one per candidate, or one); a forward costs `overhead` plus its rows times
    its longest row. Returns the start index of each forward, the cheapest cut (dynamic
    programming over the contiguous cuts; the batch is length-sorted, so these suffice)."""
    n = len(rows)
    best = [0.0] + [float("inf")] * n    # best[j]: cheapest cost of the first j samples
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        longest, count = 0, 0
        for i in range(j - 1, -1, -1):      # the last forward holds samples i..j-1
            longest, count = max(longest, *rows[i]), count + len(rows[i])
            c = best[i] + overhead + count * longest
            if c < best[j]:
                best[j], cut[j] = c, i
    starts, j = [], n
    while j > 0:
        starts.append(cut[j])
        j = cut[j]
    return starts[::-1]


def _batch_scores(model, enc: Encoder, run) -> list[torch.Tensor]:
    """mezo.scoring.scores of `run`, on CPU in the forwards split_for_padding cuts it into. The
    cut depends on the batch alone, and a batch is scored whole by one rank, so the forwards are
    the same on any number of ranks; a rank with fewer forwards than another runs dummy ones
    (FSDP2 all-gathers in every forward, so every rank must run as many)."""
    device = next(model.parameters()).device
    starts = split_for_padding([scored_rows(enc, s) for s in run]) if device.type == "cpu" and len(run) > 1 else [0]
    bounds = list(zip(starts, starts[1:] + [len(run)]))
    # agreed before any forward: a rank in this collective while another all-gathers weights would hang
    most = int(D.all_gather_cat(torch.tensor([float(len(bounds))])).max()) if D.world_size() > 1 else len(bounds)
    out = [sc for a, b in bounds for sc in scores(model, enc, run[a:b])]
    for _ in range(most - len(bounds)):
        scores(model, enc, run[:1])
    return out


def _loss_pass(model, enc: Encoder, samples, order, batch_size: int, kind: str) -> torch.Tensor:
    """[len(samples), 2] fp64 (loss, count) of each sample under `kind`, the same batches as the
    metric pass; every rank runs the same number of forwards."""
    out = torch.zeros((len(samples), 2), dtype=torch.float64)
    for batch in rank_batches(order, batch_size):
        run = [samples[i] for i in batch] or samples[:1]
        v, c = example_losses(model, enc, run, kind)
        v = v.detach().to("cpu", torch.float64)
        for j, i in enumerate(batch):
            out[i, 0], out[i, 1] = v[j], float(c[j])
    return out


@torch.no_grad()
def evaluate_with_loss(model, enc: Encoder, samples, batch_size: int, loss: str | None,
                       predictions: list | None = None) -> tuple[dict, float | None]:
    """(the task's metrics over `samples`, the mean training loss of kind `loss` over them,
    None without samples or loss); with `predictions` (a list), every (sample, prediction)
    pair, in the order of `samples`, is appended to it (on every rank)."""
    if not samples:
        return {}, None
    gen = not samples[0].candidates
    keys = ["f1", "em"] if gen else ["accuracy"]
    order = sorted(range(len(samples)), key=lambda i: -len(enc(samples[i])[0]))
    values = torch.zeros((len(samples), len(keys)), dtype=torch.float64)
    losses = None
    same_pass = loss == "classification" and not gen  # the CE comes from the scores of the predictions
    if same_pass:
        losses = torch.zeros((len(samples), 2), dtype=torch.float64)
    mine: dict[int, object] = {}
    for batch in rank_batches(order, batch_size):
        run = [samples[i] for i in batch] or samples[:1]
        if gen:
            preds = generate(model, enc, run, sync=D.sync_counts if D.world_size() > 1 else None)
        else:
            sc = _batch_scores(model, enc, run)
            preds = [int(s.argmax()) for s in sc]
        for j, (i, p) in enumerate(zip(batch, preds)):
            m = sample_metric(samples[i], p)
            values[i] = torch.tensor([m[k] for k in keys], dtype=torch.float64)
            mine[i] = p
            if same_pass:  # mezo.scoring.classification_losses of this sample
                s = sc[j]
                ce = F.cross_entropy(s[None], torch.tensor([samples[i].label], device=s.device))
                losses[i, 0], losses[i, 1] = float(ce), 1.0
    if loss is not None and not same_pass:
        losses = _loss_pass(model, enc, samples, order, batch_size, loss)
    values = D.all_reduce_sum(values)
    if predictions is not None:
        found = {i: p for part in D.all_gather_objects(mine) for i, p in part.items()}
        predictions.extend((s, found[i]) for i, s in enumerate(samples))
    metrics = {k: math.fsum(values[:, j].tolist()) / len(samples) for j, k in enumerate(keys)}
    if losses is None:
        return metrics, None
    losses = D.all_reduce_sum(losses)
    return metrics, hf_eval_loss(losses[:, 0].tolist(), losses[:, 1].tolist())


def evaluate(model, enc: Encoder, samples, batch_size: int, predictions: list | None = None) -> dict:
    """The task's metrics over `samples` (see evaluate_with_loss)."""
    return evaluate_with_loss(model, enc, samples, batch_size, None, predictions)[0]

"""Candidate scoring for causal LMs: the training loss and the evaluation both come from here.

A sample's score for candidate c is the mean log-likelihood of c's tokens after the prompt
(the reference's option scoring). The training loss is the cross-entropy over those scores
(the reference's --train_as_classification). Batches are left-padded so every sequence ends
at the same position and only the last few positions go through the LM head
(`logits_to_keep`). When every candidate is one token, the candidates need no forward of their
own: one forward of the prompts gives all of their log-likelihoods.
"""
from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F

from mezo.tasks import Sample


class Encoder:
    """Tokenises samples once: prompt ids (left-truncated to max_length) and candidate ids."""

    def __init__(self, tokenizer, max_length: int = 2048):
        self.tok = tokenizer
        self.max_length = max_length
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
        self._cache: dict[int, tuple[list[int], list[list[int]]]] = {}

    def __call__(self, s: Sample) -> tuple[list[int], list[list[int]]]:
        key = id(s)
        if key not in self._cache:
            prompt = self.tok(s.prompt).input_ids
            cands = [self.tok(c, add_special_tokens=False).input_ids for c in s.candidates]
            longest = max((len(c) for c in cands), default=0)
            budget = self.max_length - longest
            if len(prompt) > budget:  # keep the end of the prompt (and its first, special, token)
                prompt = prompt[:1] + prompt[len(prompt) - budget + 1:]
            self._cache[key] = (prompt, cands)
        return self._cache[key]


def _accepts(model, name: str) -> bool:
    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def forward_last(model, seqs: list[list[int]], pad_id: int, keep: int) -> torch.Tensor:
    """Log-probabilities [B, keep, V] at the last `keep` positions of left-padded `seqs`."""
    device = next(model.parameters()).device
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, T - len(s):] = torch.tensor(s)
        mask[i, T - len(s):] = 1
    kwargs = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
    if _accepts(model, "position_ids"):
        kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0).to(device)
    if _accepts(model, "logits_to_keep"):
        kwargs["logits_to_keep"] = keep
    logits = model(**kwargs).logits[:, -keep:].float()
    return F.log_softmax(logits, dim=-1)


def candidate_scores(model, enc: Encoder, samples: list[Sample]) -> list[torch.Tensor]:
    """Mean log-likelihood of each candidate, one tensor [n_candidates] per sample."""
    encoded = [enc(s) for s in samples]
    if all(len(c) == 1 for _, cands in encoded for c in cands):
        logp = forward_last(model, [p for p, _ in encoded], enc.pad_id, keep=1)[:, 0]
        return [logp[i, [c[0] for c in cands]] for i, (_, cands) in enumerate(encoded)]
    seqs, lens, owner = [], [], []
    for i, (p, cands) in enumerate(encoded):
        for c in cands:
            seqs.append(p + c)
            lens.append(len(c))
            owner.append(i)
    L = max(lens)
    logp = forward_last(model, seqs, enc.pad_id, keep=L + 1)[:, :-1]  # predicts the last L tokens
    targets = torch.zeros((len(seqs), L), dtype=torch.long, device=logp.device)
    valid = torch.zeros((len(seqs), L), dtype=torch.bool, device=logp.device)
    for j, s in enumerate(seqs):
        targets[j, L - lens[j]:] = torch.tensor(s[-lens[j]:])
        valid[j, L - lens[j]:] = True
    tok_lp = logp.gather(-1, targets[..., None])[..., 0] * valid
    mean_lp = tok_lp.sum(-1) / valid.sum(-1)
    out, j = [], 0
    for _, cands in encoded:
        out.append(mean_lp[j: j + len(cands)])
        j += len(cands)
    return out


def classification_loss(model, enc: Encoder, samples: list[Sample]) -> torch.Tensor:
    """Summed cross-entropy over candidate scores (divide by len(samples) for the mean)."""
    scores = candidate_scores(model, enc, samples)
    return sum(F.cross_entropy(s[None], torch.tensor([x.label], device=s.device)) for s, x in zip(scores, samples))


def predict(model, enc: Encoder, samples: list[Sample]) -> list[int]:
    return [int(s.argmax()) for s in candidate_scores(model, enc, samples)]

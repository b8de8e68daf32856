"""Task metrics: accuracy, SQuAD exact match / F1 (MeZO large_models/metrics.py, max over the
gold answers), and the DROP F1 of the official evaluator (drop_eval.py), reimplemented.

The reference scores DROP with the SQuAD F1 over the gold spans (metric "f1"); `drop_f1` is
the official one: answers become bags of normalised tokens (numbers canonicalised, e.g.
"1,000" -> "1000.0", punctuation kept inside numbers), bags are matched one-to-one for the best
total F1, and a gold bag with numbers scores 0 unless a number matches. Simplified: a single
predicted string is one bag (we generate free text, not a span list), and each gold answer is
a string or a list of spans. Answer types (number / date / span) are not distinguished.
"""
from __future__ import annotations

import itertools
import re
import string
from collections import Counter

import numpy as np

_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """SQuAD: lower, drop punctuation, drop articles, squeeze whitespace."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def _token_f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if same == 0:
        return 0.0
    p, r = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * p * r / (p + r)


def exact_match(pred: str, golds: list[str]) -> float:
    return float(any(normalize_answer(g) == normalize_answer(pred) for g in golds))


def f1(pred: str, golds: list[str]) -> float:
    """SQuAD F1, max over gold answers (the reference's; "CANNOTANSWER" / "no answer" gold
    is scored by exact match)."""
    if golds[0] in ("CANNOTANSWER", "no answer"):
        return float(normalize_answer(golds[0]) == normalize_answer(pred))
    return max(_token_f1(normalize_answer(pred).split(), normalize_answer(g).split()) for g in golds)


def accuracy(preds: list[int], golds: list[int | list[int]]) -> float:
    """Share of predictions equal to the gold index, or in the gold list (ReCoRD)."""
    hits = [p in g if isinstance(g, (list, tuple)) else p == g for p, g in zip(preds, golds)]
    return float(np.mean(hits)) if hits else 0.0


# ------------------------------------------------------------------------------ DROP
def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _drop_normalize(span: str) -> str:
    """Per token (split on space and hyphen): lower, strip punctuation unless a number,
    canonicalise numbers (str(float)), drop articles; then join the non-empty tokens."""
    out = []
    for tok in re.split(" |-", span):
        tok = tok.lower()
        tok = tok if _is_number(tok) else "".join(c for c in tok if c not in _PUNCT)
        tok = str(float(tok)) if _is_number(tok) else tok
        tok = " ".join(re.sub(r"\b(a|an|the)\b", " ", tok).split())
        if tok.strip():
            out.append(tok)
    return " ".join(out).strip()


def _bag_f1(pred: set[str], gold: set[str]) -> float:
    inter = len(pred & gold)
    p = inter / len(pred) if pred else 1.0
    r = inter / len(gold) if gold else 1.0
    return 2 * p * r / (p + r) if p + r else 0.0


def _numbers(bag: set[str]) -> set[str]:
    return {t for t in bag if _is_number(t)}


def _drop_answer(pred_spans: list[str], gold_spans: list[str]) -> tuple[float, float]:
    pn, gn = [_drop_normalize(s) for s in pred_spans], [_drop_normalize(s) for s in gold_spans]
    em = float(set(pn) == set(gn) and len(pn) == len(gn))
    pb, gb = [set(s.split()) for s in pn], [set(s.split()) for s in gn]

    def pair(g: set[str], p: set[str]) -> float:
        if _numbers(g) and not (_numbers(g) & _numbers(p)):
            return 0.0
        return _bag_f1(p, g)

    # best one-to-one alignment of gold and predicted bags (official: scipy linear_sum_assignment)
    n, k = max(len(gb), len(pb)), min(len(gb), len(pb))
    best = 0.0
    for gi in itertools.combinations(range(len(gb)), k):
        for pi in itertools.permutations(range(len(pb)), k):
            best = max(best, sum(pair(gb[g], pb[p]) for g, p in zip(gi, pi)))
    return em, round(best / n, 2) if n else 0.0


def drop_em_f1(pred: str | list[str], golds: list[str | list[str]]) -> tuple[float, float]:
    """Official-style DROP (EM, F1), max over the gold answers."""
    pred_spans = [pred] if isinstance(pred, str) else list(pred)
    scores = [_drop_answer(pred_spans, [g] if isinstance(g, str) else list(g)) for g in golds]
    return max(s[0] for s in scores), max(s[1] for s in scores)


def drop_f1(pred: str | list[str], golds: list[str | list[str]]) -> float:
    return drop_em_f1(pred, golds)[1]


def score(metric: str, preds: list, golds: list) -> float:
    """Mean of a task's metric: "accuracy" (indices), "f1" / "em" / "drop_f1" (texts vs gold lists)."""
    if metric == "accuracy":
        return accuracy(preds, golds)
    fn = {"f1": f1, "em": exact_match, "drop_f1": drop_f1}[metric]
    return float(np.mean([fn(p, g) for p, g in zip(preds, golds)])) if preds else 0.0

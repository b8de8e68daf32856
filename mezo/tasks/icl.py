"""In-context learning as the reference does it (large_models/utils.py encode_prompt, tasks.py
sample_train_sets, run.py): pure functions over Samples.

Each demonstration is its gold verbalization, `(prompt + gold continuation).strip()`; the
demos are joined by the task's separator ("\\n\\n" for every MeZO task), then the separator
and the test prompt follow, and the whole is `.lstrip()`-ed. The candidates do not change.
The reference truncates the tokenized prompt + candidate from the left to max_length, keeping
a leading BOS (`left_truncate`); `icl_prompt` can also drop whole demos up front.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from mezo.tasks.base import Sample, Task, permutation_subset

TRAIN_SEP = "\n\n"


def demo_text(demo: Sample) -> str:
    return (demo.prompt + demo.gold_text()).strip()


def icl_prompt(task: Task | None, demos: list[Sample], sample: Sample, max_tokens: int | None = None,
               count_tokens: Callable[[str], int] | None = None, reserve: int = 0) -> str:
    """The context for `sample` after `demos`. With max_tokens and count_tokens, the oldest
    demos are dropped until count_tokens(context + longest candidate) + reserve fits (reserve:
    e.g. max_new_tokens for generation). Without them nothing is dropped, as the reference."""
    sep = getattr(task, "train_sep", TRAIN_SEP)
    longest = max(sample.candidates, key=len, default="")
    demos = list(demos)
    while True:
        context = (sep.join(demo_text(d) for d in demos).strip() + sep + sample.prompt).lstrip()
        if not demos or max_tokens is None or count_tokens is None:
            return context
        if count_tokens(context + longest) + reserve <= max_tokens:
            return context
        demos.pop(0)


def left_truncate(ids: list[int], max_length: int, keep_first: bool = True) -> list[int]:
    """The reference's cut: keep the last max_length tokens; with keep_first (a BOS the tokenizer
    added, as for OPT / LLaMA) keep token 0 and the last max_length - 1."""
    if len(ids) <= max_length:
        return ids
    return ids[:1] + ids[1:][-(max_length - 1):] if keep_first else ids[-max_length:]


def sample_demos(train: list[Sample], num_demos: int, seed: int) -> list[Sample]:
    """sample_subset("train", seed, num): np.random.seed(seed); permutation(n)[:num]."""
    return [train[i] for i in permutation_subset(len(train), seed, num_demos)]


def demo_sets(train: list[Sample], num_demos: int, *, num_eval: int | None = None,
              train_set_seed: int | None = None, num_train_sets: int | None = None) -> list[list[Sample]]:
    """sample_train_sets for ICL: one set with train_set_seed; else num_train_sets sets with
    seeds 0..n-1; else one set per evaluation sample, seeds = np.random.seed(0);
    randint(0, 10000, num_eval) (then each eval sample i uses set i)."""
    if train_set_seed is not None:
        seeds = [train_set_seed]
    elif num_train_sets is not None:
        seeds = list(range(num_train_sets))
    else:
        if num_eval is None:
            raise ValueError("one demo set per eval sample needs num_eval")
        seeds = np.random.RandomState(0).randint(0, 10000, num_eval).tolist()
    return [sample_demos(train, num_demos, s) for s in seeds]

"""What a task is: where its data lives, how a row becomes a prompt with candidates, how it
is sampled into train / dev / test, and how it is scored.

A task turns a raw row (a dict in the Hugging Face column layout) into a `Sample`:
the prompt text, the candidate continuations (classification and multiple choice) and
the index of the correct one, or the gold answers (generation). The training loop, the
loss and the evaluator only ever see `Sample`s, so a new task is a new subclass plus one
line in the registry (`mezo/tasks/__init__.py`).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Sample:
    prompt: str                     # the context the model reads
    candidates: list[str]           # continuations, each with its leading space ([] for generation)
    label: int | None = None        # index of the correct candidate
    answers: list[str] | None = None  # gold answers (generation tasks)
    data: dict = field(default_factory=dict)  # the raw row
    gold: list[int] | None = None   # every correct candidate index where several are (ReCoRD)
    target: str | None = None       # generation: the teacher-forced gold continuation (" answer\n")
    parts: object | None = None     # masked LM: how the input is tokenised, part by part (mlm.LMBFFInput)

    @property
    def gold_ids(self) -> list[int]:
        """Indices counted correct by accuracy (the reference: `pred in correct_candidate`)."""
        return self.gold if self.gold is not None else [self.label]

    def gold_text(self) -> str:
        """The gold continuation: what the "lm" loss teacher-forces and what ICL demos show."""
        return self.target if self.target is not None else self.candidates[self.label]


class Task:
    """Base class. Subclasses set the class attributes and implement `sample`."""
    name: str = ""
    hf_path: str = ""                 # datasets.load_dataset(hf_path, hf_config)
    hf_config: str | None = None
    data_path: str = ""               # folder under --data_dir holding <split>.jsonl
    train_split: str = "train"
    eval_split: str = "validation"
    kind: str = "classification"      # classification | multiple_choice | generation
    metric: str = "accuracy"          # accuracy | f1 | em (see mezo.metrics.score)
    train_loss: str = "classification"  # "classification": CE over candidate log-likelihoods;
                                        # "lm": teacher-forced loss on the gold continuation only
    family: str = "causal"            # causal (decoder LM) | mlm (RoBERTa, LM-BFF prompts)
    missing_note: str = ""            # appended to the error when a local split file is absent
    num_dev: int = 500                # the reference's default dev size for this task

    def __init__(self, text_column: str | None = None):
        self.text_column = text_column

    def sample(self, row: dict) -> Sample:
        raise NotImplementedError

    # ------------------------------------------------------------------ data
    def split_file(self, data_dir: str, split: str) -> str:
        return os.path.join(data_dir, self.data_path, f"{split}.jsonl")

    def load_split(self, split: str, data_dir: str | None = None, hf_path: str | None = None,
                   hf_config: str | None = None) -> list[dict]:
        """Rows of a split: JSON Lines under data_dir, else datasets.load_dataset from the hub."""
        if data_dir:
            path = self.split_file(data_dir, split)
            if not os.path.exists(path):
                raise FileNotFoundError(f"{self.name}: no {split!r} split at {path}" + self.missing_note)
            with open(path, encoding="utf-8") as f:
                return [json.loads(line) for line in f if line.strip()]
        import datasets
        path, config = hf_path or self.hf_path, hf_config if hf_path else self.hf_config
        return list(datasets.load_dataset(path, config, split=split))


def find_data_dir(start: str | None = None) -> str | None:
    """$MEZO_DATA_DIR, else the first `shared/data` found walking up from this package."""
    if os.environ.get("MEZO_DATA_DIR"):
        return os.environ["MEZO_DATA_DIR"]
    d = os.path.abspath(start or os.path.dirname(__file__))
    while True:
        cand = os.path.join(d, "shared", "data")
        if os.path.isdir(cand):
            return cand
        parent = os.path.dirname(d)
        if parent == d:
            return None
        d = parent


def permutation_subset(n_rows: int, seed: int, num: int | None) -> list[int]:
    """The reference's sample_subset: np.random.seed(seed); np.random.permutation(n)[:num]."""
    idx = np.random.RandomState(seed).permutation(n_rows).tolist()
    return idx if num is None else idx[:num]


@dataclass
class Splits:
    train: list[Sample]
    dev: list[Sample]
    test: list[Sample]


def make_splits(task: Task, train_rows: list[dict], eval_rows: list[dict], *, num_train: int,
                num_dev: int | None, num_eval: int | None, train_set_seed: int = 0,
                eval_seed: int | None = None) -> Splits:
    """Sampling as the reference (MeZO run.py): one permutation of train with train_set_seed
    gives num_train + num_dev rows, the last num_dev are the dev set; test is a permutation of
    the evaluation split cut to num_eval, seeded like the reference's
    `task.sample_subset("valid", seed=train_set_seed, num=num_eval)`, i.e. eval_seed defaults
    to train_set_seed (pass eval_seed=0 to keep one test set across seeds)."""
    num_dev = task.num_dev if num_dev is None else num_dev
    eval_seed = train_set_seed if eval_seed is None else eval_seed
    idx = permutation_subset(len(train_rows), train_set_seed, num_train + num_dev)
    rows = [train_rows[i] for i in idx]
    train, dev = (rows[:-num_dev], rows[-num_dev:]) if num_dev > 0 else (rows, [])
    test = [eval_rows[i] for i in permutation_subset(len(eval_rows), eval_seed, num_eval)]
    s = task.sample
    return Splits([s(r) for r in train], [s(r) for r in dev], [s(r) for r in test])

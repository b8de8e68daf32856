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

from mezo.errors import BadInput


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
    columns: tuple[str, ...] = ()     # the text columns every row needs (checked: present, a string)
    label_column: str | None = "label"  # the class label (None: the task has none)
    unlabelled: int | None = None     # a label that marks a row without gold, dropped (HF snli: -1)
    uses_text_column: bool = False    # --text_column picks the column of the text (single-sentence tasks)

    def __init__(self, text_column: str | None = None):
        self.text_column = text_column

    def sample(self, row: dict) -> Sample:
        raise NotImplementedError

    # ------------------------------------------------------------------ data
    def split_file(self, data_dir: str, split: str) -> str:
        return os.path.join(data_dir, self.data_path, f"{split}.jsonl")

    def load_split(self, split: str, data_dir: str | None = None, hf_path: str | None = None,
                   hf_config: str | None = None) -> list[dict]:
        """Rows of a split: JSON Lines under data_dir, else datasets.load_dataset from the hub.
        Every row is checked (check_row): BadInput `FILE:LINE: what is wrong` (the hub: `row N`)."""
        if data_dir:
            path = self.split_file(data_dir, split)
            if not os.path.exists(path):
                raise FileNotFoundError(f"{self.name}: no {split!r} split at {path}" + self.missing_note)
            rows, lines = read_jsonl(path)
            self.check_rows(rows, path, lambda i: f"{path}:{lines[i]}")
            return rows
        path, config = hf_path or self.hf_path, hf_config if hf_path else self.hf_config
        name = path + (f"/{config}" if config else "")
        try:
            import datasets
            rows = list(datasets.load_dataset(path, config, split=split))
        except Exception as e:  # offline, no network, unknown dataset or split: say what is missing instead
            why = (str(e).strip().splitlines() or [""])[0][:160]
            raise BadInput(f"task {self.name}: cannot read {name} ({split}) from the Hugging Face hub "
                           f"({type(e).__name__}: {why}); offline, pass --data_dir D holding "
                           f"D/{self.data_path}/{{{self.train_split},{self.eval_split}}}.jsonl (one JSON object per "
                           f"line, the hub's columns), e.g. --data_dir ../shared/data") from None
        self.check_rows(rows, f"{name} (hub, {split})", lambda i: f"{name} (hub, {split}) row {i + 1}")
        return rows

    # ------------------------------------------------------------------ checks
    def label_values(self) -> tuple | None:
        """The valid class labels (None: the task has no class label)."""
        return None

    def label_text(self) -> str:
        """The valid labels, for an error message."""
        return ", ".join(map(str, self.label_values() or ()))

    def missing(self, row: dict, needed: tuple) -> str | None:
        lost = [c for c in needed if c not in row]
        if not lost:
            return None
        return (f"no column {', '.join(map(repr, lost))} (the row has {', '.join(map(repr, row)) or 'none'}; "
                f"task {self.name} needs {', '.join(map(repr, needed))})")

    def check_row(self, row: dict) -> str | None:
        """What is wrong with a raw row for this task, None when nothing: the columns it needs are
        there, text columns hold text, the label is one of the task's. Cheap: every row read is checked."""
        return self.check_columns(row, self.columns)

    def check_columns(self, row: dict, columns: tuple[str, ...]) -> str | None:
        spec = self._specs.get(columns) if hasattr(self, "_specs") else None
        if spec is None:  # what a row needs, worked out once per task and column set
            valid = self.label_values() if self.label_column else None
            spec = (tuple(columns) + ((self.label_column,) if self.label_column else ()),
                    None if valid is None else frozenset(valid) | ({self.unlabelled} - {None}))
            self.__dict__.setdefault("_specs", {})[columns] = spec
        needed, valid = spec
        for c in needed:
            if c not in row:
                return self.missing(row, needed)
        for c in columns:
            if type(row[c]) is not str:
                return f"column {c!r} holds {type(row[c]).__name__} {_short(row[c])}, not text"
        if valid is None:
            return None
        v = row[self.label_column]
        if type(v) is int and v in valid:
            return None
        hint = " (-1 marks an unlabelled row, as in the GLUE / SuperGLUE test splits: use a labelled split)" \
            if v == -1 else ""
        return f"label {_short(v)} is not one of task {self.name}'s labels: {self.label_text()}{hint}"

    def check_rows(self, rows: list, shown: str, where) -> None:
        """BadInput `where(i): problem` at the first bad row; an empty split, or one whose every row
        is unlabelled, is named too (`shown`)."""
        if not rows:
            raise BadInput(f"{shown}: empty (no rows)")
        for i, row in enumerate(rows):
            problem = self.check_row(row)
            if problem:
                raise BadInput(f"{where(i)}: {problem}")
        if self.unlabelled is not None and self.label_column and \
                all(r[self.label_column] == self.unlabelled for r in rows):
            raise BadInput(f"{shown}: every row is unlabelled (label {self.unlabelled}): use a labelled split")


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def read_jsonl(path: str) -> tuple[list[dict], list[int]]:
    """The rows of a JSON Lines file and the line number of each (blank lines are skipped).
    BadInput `FILE:LINE: what is wrong` for bytes that are not UTF-8, a line that is not JSON
    (a truncated line is named by its own number), or a value that is not an object."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line, line_start = data.count(b"\n", 0, e.start) + 1, data.rfind(b"\n", 0, e.start) + 1
        raise BadInput(f"{path}:{line}: not UTF-8 (byte 0x{data[e.start]:02x} at column {e.start - line_start + 1}); "
                       f"the data files are UTF-8 JSON Lines") from None
    rows, numbers = [], []
    loads = json.loads
    for n, line in enumerate(text.split("\n"), 1):
        try:
            row = loads(line)
        except ValueError as e:
            if not line.strip():
                continue
            raise BadInput(f"{path}:{n}: not valid JSON ({getattr(e, 'msg', e)}, column {getattr(e, 'colno', '?')}): "
                           f"a truncated or corrupt line") from None
        if type(row) is not dict:
            raise BadInput(f"{path}:{n}: one JSON object (a row) per line expected, got {type(row).__name__}")
        rows.append(row)
        numbers.append(n)
    return rows, numbers


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

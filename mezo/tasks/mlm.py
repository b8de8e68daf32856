"""Masked-LM tasks (RoBERTa) with LM-BFF prompts, as MeZO's medium models run them.

A sample's prompt is the LM-BFF template rendered to text with MASK ("<mask>") where the
mask token goes (for reading and logs). Candidates are the label words with their leading space
(LM-BFF scores " great" at the mask). The model input is what LM-BFF's tokenize_multipart_input
(medium_models/src/dataset.py, prompt without demonstrations) builds: the template tokenised part
by part, each sentence part cut to first_sent_limit (sentence 0) or other_sent_limit tokens, the
whole cut from the tail to max_seq_len tokens (128, or the task's --max_seq_len 256 in
run_fewshot.sh). `Sample.parts` (an LMBFFInput) carries that recipe to the scorer.

Data: k examples per class for train and k more for dev (`kshot_splits`, LM-BFF's
generate_k_shot_data.py with --mode k-shot-1k-test), test = the task's evaluation split cut to
1000 rows (`kshot_test`), or LM-BFF's own split files (`load_kshot`).
"""
from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass

import numpy as np

from mezo.errors import BadInput
from mezo.telemetry import log
from mezo.tasks.base import Sample, Splits, Task
from mezo.tasks.templates import MLM

MASK = "<mask>"
LMBFF_TREC_TO_HF = {0: 2, 1: 1, 2: 0, 3: 3, 4: 4, 5: 5}   # LM-BFF (SentEval) id -> HF coarse_label
NLI_IDS = {"entailment": 0, "neutral": 1, "contradiction": 2}  # HF snli / glue mnli


def render_lmbff(template: str, sents: list[str]) -> list[tuple[str, int | None]]:
    """LM-BFF's template language as text parts: [(text, sentence id or None)].
    *cls* / *sep+* are left to the tokenizer's special tokens; *mask* is MASK; *sent_i*,
    *+sent_i* (leading space), *sent-_i* (last character dropped), *sentl_i* / *+sentl_i*
    (first character lower-cased); anything else is literal text with "_" for a space."""
    out = []
    for part in template.split("*"):
        if part in ("", "cls", "sep", "sep+", "bos", "eos"):
            continue
        if part == "mask":
            out.append((MASK, None))
            continue
        head, _, idx = part.rpartition("_")
        if head.lstrip("+").startswith("sent") and idx.isdigit():
            text = sents[int(idx)]
            if "l" in head:
                text = text[:1].lower() + text[1:]
            if head.endswith("-"):
                text = text[:-1]
            out.append(((" " if head.startswith("+") else "") + text, int(idx)))
        else:
            out.append((part.replace("_", " "), None))
    return out


LMBFF_MAX_LENGTH = 128      # run_fewshot.sh --max_seq_length 128 unless the task sets --max_seq_len
SPECIAL_IDS = {"cls": "cls_token_id", "bos": "bos_token_id", "eos": "eos_token_id", "sep": "sep_token_id",
               "sep+": "sep_token_id", "mask": "mask_token_id"}
_SENT = re.compile(r"^(\+?)sent([lu]?)(-?)_(\d+)$")   # *sent_i*, *+sentl_i*, *sent-_i*, *sentu-_i*, ...


@dataclass(frozen=True)
class LMBFFInput:
    """One example's LM-BFF input recipe: the template, the sentences and the length limits."""
    template: str
    sents: tuple[str, ...]
    first_sent_limit: int | None = None
    other_sent_limit: int | None = None
    max_length: int = LMBFF_MAX_LENGTH

    def ids(self, tok, max_length: int | None = None) -> list[int]:
        """tokenize_multipart_input(prompt=True): each template part tokenised on its own (no
        special tokens), sentence parts cut to their limit, then the whole cut from the tail to
        min(self.max_length, max_length) tokens (truncate_head False). Where that cut would drop
        the mask (LM-BFF stops with an assertion there), the head is cut instead, keeping <s>."""
        out: list[int] = []
        for part in self.template.split("*"):
            if not part:
                continue
            if part in SPECIAL_IDS:
                out.append(getattr(tok, SPECIAL_IDS[part]))
                continue
            m = _SENT.match(part)
            if m:
                space, case, drop, i = m.groups()
                text = self.sents[int(i)]
                if case:
                    text = (text[:1].lower() if case == "l" else text[:1].upper()) + text[1:]
                if drop:
                    text = text[:-1]
                new = tok((" " if space else "") + text, add_special_tokens=False).input_ids
                limit = self.first_sent_limit if int(i) == 0 else self.other_sent_limit
                out += new[:limit] if limit is not None else new
            elif len(part) == 1:  # LM-BFF looks a one-character part up as a token
                out.append(tok.convert_tokens_to_ids(part))
            else:
                out += tok(part.replace("_", " "), add_special_tokens=False).input_ids
        n = self.max_length if max_length is None else min(self.max_length, max_length)
        if len(out) > n:
            cut = out[:n]
            out = cut if tok.mask_token_id in cut else out[:1] + out[len(out) - n + 1:]
        return out


class MLMTask(Task):
    family = "mlm"
    kshot_name = ""          # folder under <data_dir>/k-shot/
    columns: tuple[str, ...] = ("sentence",)
    label_column = "label"
    num_dev = None           # k per class, see kshot_splits

    @property
    def template(self):
        return MLM[self.kshot_name]

    def label(self, row: dict) -> int:
        return int(row[self.label_column])

    def label_values(self) -> tuple:
        return tuple(range(len(self.template.words)))

    def label_text(self) -> str:
        return ", ".join(f"{i} ({w})" for i, w in enumerate(self.template.words))

    def segments(self, row: dict) -> list[tuple[str, int | None]]:
        return render_lmbff(self.template.template, self.sentences(row))

    def sentences(self, row: dict) -> list[str]:
        return [row[c] for c in self.columns]

    def sample(self, row: dict) -> Sample:
        prompt = "".join(text for text, _ in self.segments(row))
        t = self.template
        parts = LMBFFInput(t.template, tuple(self.sentences(row)), t.first_sent_limit, t.other_sent_limit,
                           t.max_seq_len or LMBFF_MAX_LENGTH)
        return Sample(prompt, [" " + w for w in t.words], self.label(row), data=row, parts=parts)


class SST2MLM(MLMTask):
    name, kshot_name, hf_path, hf_config, data_path = "SST-2", "SST-2", "glue", "sst2", "glue/sst2"


class SST5MLM(MLMTask):
    name, kshot_name, hf_path, data_path = "SST-5", "sst-5", "SetFit/sst5", "sst5"
    columns, eval_split = ("text",), "test"


class TRECMLM(MLMTask):
    name, kshot_name, hf_path, data_path = "TREC", "trec", "trec", "trec"
    columns, label_column, eval_split = ("text",), "coarse_label", "test"


class NLIMLM(MLMTask):
    columns = ("premise", "hypothesis")

    def check_row(self, row: dict) -> str | None:
        glue = "premise" not in row and "sentence1" in row   # GLUE RTE's column names
        return self.check_columns(row, ("sentence1", "sentence2") if glue else self.columns)

    def sentences(self, row: dict) -> list[str]:
        a, b = (self.columns if "premise" in row else ("sentence1", "sentence2"))
        return [row[a], row[b]]


class MNLIMLM(NLIMLM):
    """Test = GLUE validation_matched, which the local data lacks (it has
    glue/mnli/validation_from_train.jsonl, drawn from train: not comparable with the paper)."""
    name, kshot_name, hf_path, hf_config, data_path = "MNLI", "MNLI", "glue", "mnli", "glue/mnli"
    eval_split = "validation_matched"


class SNLIMLM(NLIMLM):
    """Test = SNLI validation (LM-BFF's dev.tsv); locally only snli/test.jsonl exists."""
    name, kshot_name, hf_path, data_path = "SNLI", "SNLI", "snli", "snli"
    unlabelled = -1   # HF snli: pairs the annotators did not agree on (dropped, as LM-BFF does)


class RTEMLM(NLIMLM):
    """LM-BFF uses GLUE RTE; super_glue/rte is the same data (premise/hypothesis columns)."""
    name, kshot_name, hf_path, hf_config, data_path = "RTE", "RTE", "super_glue", "rte", "super_glue/rte"


# ---------------------------------------------------------------------------- k-shot data
def kshot_rows(task: MLMTask, rows: list[dict], k: int, seed: int) -> tuple[list[dict], list[dict]]:
    """LM-BFF's generate_k_shot_data.py: np.random.seed(seed); shuffle train; group by label in
    order of first appearance; train = the first k of each group, dev = the next k."""
    rows = [r for r in rows if task.label(r) >= 0]   # HF snli marks pairs without gold as -1
    np.random.RandomState(seed).shuffle(rows)
    groups: dict[int, list[dict]] = {}
    for r in rows:
        groups.setdefault(task.label(r), []).append(r)
    short = {label: len(g) for label, g in groups.items() if len(g) < 2 * k}
    if short:  # LM-BFF's generator takes what there is without a word; the splits are then unbalanced
        log.warning("%s: k=%d per class needs %d train rows per class (train + dev); %s: train and dev get "
                    "fewer, unbalanced", task.name, k, 2 * k,
                    ", ".join(f"class {label} has {n}" for label, n in sorted(short.items())))
    train = [r for g in groups.values() for r in g[:k]]
    dev = [r for g in groups.values() for r in g[k:2 * k]]
    return train, dev


def kshot_test(task: MLMTask, rows: list[dict], limit: int = 1000) -> list[Sample]:
    """k-shot-1k-test: an evaluation split over `limit` rows is cut to a seed-42 shuffle's
    first `limit` (np.random.seed(42); shuffle, as pandas .sample(random_state=42) too)."""
    rows = [r for r in rows if task.label(r) >= 0]
    if len(rows) > limit:
        rows = [rows[i] for i in np.random.RandomState(42).permutation(len(rows))[:limit]]
    return [task.sample(r) for r in rows]


def kshot_splits(task: MLMTask, rows: list[dict], k: int, seed: int,
                 eval_rows: list[dict] | None = None) -> Splits:
    """Splits for `--k 16|512 --data_seed 13|21|42|87|100`: k per class for train and dev
    (disjoint) from the train rows; test from eval_rows (<= 1000), empty when not given."""
    train, dev = kshot_rows(task, rows, k, seed)
    test = kshot_test(task, eval_rows) if eval_rows is not None else []
    return Splits([task.sample(r) for r in train], [task.sample(r) for r in dev], test)


def _tsv(path: str) -> list[tuple[int, list[str]]]:
    """(line number, fields) of each row (the header line left out)."""
    with open(path, encoding="utf-8") as f:
        lines = [(n, line.rstrip("\n").split("\t")) for n, line in enumerate(f, 1) if line.strip()]
    return lines[1:]   # header


def _csv(path: str) -> list[tuple[int, list[str]]]:
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        return [(reader.line_num, r) for r in reader if r]


def _lmbff_row(task: MLMTask, r: list[str]) -> dict:
    """One LM-BFF line -> a row in the task's HF column layout."""
    name = task.kshot_name
    if name == "SST-2":
        return {"sentence": r[0], "label": int(r[1])}
    if name == "sst-5":
        return {"text": r[1], "label": int(r[0])}
    if name == "trec":
        return {"text": r[1], "coarse_label": LMBFF_TREC_TO_HF[int(r[0])]}
    if name == "RTE":
        return {"premise": r[1], "hypothesis": r[2], "idx": int(r[0]),
                "label": {"entailment": 0, "not_entailment": 1}[r[-1]]}
    a = {"MNLI": 8, "SNLI": 7}[name]
    return {"premise": r[a], "hypothesis": r[a + 1], "label": NLI_IDS[r[-1]]}


def _read_lmbff(task: MLMTask, path: str, reader) -> list[dict]:
    """An LM-BFF split file's rows in the HF layout, each checked (Task.check_row); BadInput
    `FILE:LINE: what is wrong` (not UTF-8, too few fields, an unknown label)."""
    try:
        lines = reader(path)
    except UnicodeDecodeError as e:
        raise BadInput(f"{path}: not UTF-8 (byte 0x{e.object[e.start]:02x} at offset {e.start})") from None
    except csv.Error as e:
        raise BadInput(f"{path}: not a CSV file ({e})") from None
    rows = []
    for n, fields in lines:
        try:
            rows.append(_lmbff_row(task, fields))
        except (IndexError, KeyError, ValueError) as e:
            raise BadInput(f"{path}:{n}: not an LM-BFF {task.kshot_name} row ({type(e).__name__}: {e}; the line "
                           f"has {len(fields)} fields)") from None
    numbers = [n for n, _ in lines]
    task.check_rows(rows, path, lambda i: f"{path}:{numbers[i]}")
    return rows


def load_kshot(task: MLMTask, data_dir: str, k: int = 16, seed: int = 13) -> dict[str, list[dict]]:
    """LM-BFF's split files <data_dir>/k-shot/<TASK>/<k>-<seed>/{train,dev,test}.{tsv,csv} as
    rows in the HF layout (TREC ids remapped to HF order). Splits whose file is absent are
    left out (the MNLI and SNLI test files are not in the local copy)."""
    folder = os.path.join(data_dir, "k-shot", task.kshot_name, f"{k}-{seed}")
    names = {"train": "train", "dev": "dev", "test": "test"}
    if task.kshot_name == "MNLI":
        names.update(dev="dev_matched", test="test_matched")
    out = {}
    for split, stem in names.items():
        for ext, reader in ((".tsv", _tsv), (".csv", _csv)):
            path = os.path.join(folder, stem + ext)
            if os.path.exists(path):
                out[split] = _read_lmbff(task, path, reader)
    if not out:
        raise FileNotFoundError(f"no LM-BFF split files in {folder}")
    return out

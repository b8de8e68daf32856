"""Regenerate tests/data from the shared offline copy (../shared/data or $MEZO_DATA_DIR):
a few real rows per task in the same folder layout, so the tests need no shared data.

    python tests/data/make_test_data.py [SOURCE]

Causal tasks: the first TRAIN train rows and VAL validation rows (fewer for long-row tasks).
BoolQ has no local train split: its train.jsonl here is validation rows 200.. (disjoint from
the validation rows kept). DROP has no local copy: drop/*.jsonl are hand-written rows in the
HF `drop` schema (passage, question, answers_spans), marked as such in the "query_id" field.
Masked-LM tasks: LM-BFF k-shot files for k=16, seed 13, thinned to a few rows per file with
every label kept; train / test JSON Lines for the sampled k-shot path (seed != 13).
"""
from __future__ import annotations

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = sys.argv[1] if len(sys.argv) > 1 else os.environ.get(
    "MEZO_DATA_DIR", os.path.join(HERE, "..", "..", "..", "shared", "data"))

JSONL = {  # path: (train rows, validation rows)
    "glue/sst2": (40, 20), "super_glue/rte": (40, 20), "super_glue/cb": (40, 20), "super_glue/wsc.fixed": (40, 20),
    "super_glue/wic": (40, 20), "super_glue/multirc": (24, 12), "super_glue/copa": (40, 20),
    "super_glue/record": (10, 8), "squad/plain_text": (24, 12),
}
MLM_JSONL = {"sst5": ("train", "test"), "trec": ("train", "test"), "snli": ("train", "test"),
             "glue/mnli": ("train", "validation_from_train")}
KSHOT = {"SST-2": ("train.tsv", "dev.tsv", "test.tsv"), "sst-5": ("train.csv", "dev.csv", "test.csv"),
         "trec": ("train.csv", "dev.csv", "test.csv"), "RTE": ("train.tsv", "dev.tsv", "test.tsv"),
         "MNLI": ("train.tsv", "dev_matched.tsv"), "SNLI": ("train.tsv", "dev.tsv")}

DROP = [
    ("The Bears scored first on a 23-yard field goal. In the second quarter the Lions answered with two "
     "touchdowns, a 5-yard run and a 41-yard pass, before the Bears kicked a 30-yard field goal.",
     [("How many touchdowns did the Lions score?", ["2"]), ("Who scored first?", ["the Bears"]),
      ("How long was the longest field goal?", ["30-yard"])]),
    ("In 1990 the town had 12,000 inhabitants; by 2000 the population had grown to 15,500, and the census "
     "of 2010 counted 14,200 people, mostly because the mill closed in 2004.",
     [("How many more people lived in the town in 2000 than in 1990?", ["3500"]),
      ("Which year had the largest population?", ["2000"]), ("What closed in 2004?", ["the mill"])]),
    ("The army left Lisbon in March with 8,000 men. Two thousand deserted on the march, and the rest "
     "reached Madrid in June, where they joined 4,000 Spanish troops.",
     [("How many men reached Madrid from Lisbon?", ["6000"]), ("Where did the army leave from?", ["Lisbon"]),
      ("How many troops were in Madrid after they joined?", ["10000"])]),
    ("Smith threw for 310 yards and three touchdowns, while Jones ran for 95 yards. Smith's longest pass "
     "went 62 yards to Brown in the third quarter.",
     [("Who caught the longest pass?", ["Brown"]), ("How many rushing yards did Jones have?", ["95"]),
      ("How many touchdown passes did Smith throw?", ["three", "3"])]),
]


def read(path):
    with open(path, encoding="utf-8") as f:
        return [line for line in f if line.strip()]


def write(rel, lines):
    path = os.path.join(HERE, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(lines)


def spread(lines, n):
    step = max(1, len(lines) // n)
    return lines[::step][:n]


def main():
    for rel, (ntr, nval) in JSONL.items():
        write(f"{rel}/train.jsonl", read(os.path.join(SRC, rel, "train.jsonl"))[:ntr])
        write(f"{rel}/validation.jsonl", read(os.path.join(SRC, rel, "validation.jsonl"))[:nval])
    boolq = read(os.path.join(SRC, "boolq", "validation.jsonl"))
    write("boolq/validation.jsonl", boolq[:16])
    write("boolq/train.jsonl", boolq[200:224])
    for rel, splits in MLM_JSONL.items():
        for split in splits:
            write(f"{rel}/{split}.jsonl", spread(read(os.path.join(SRC, rel, f"{split}.jsonl")), 60 if split == "train" else 16))
    for task, files in KSHOT.items():
        for name in files:
            lines = read(os.path.join(SRC, "k-shot", task, "16-13", name))
            header, body = (lines[:1], lines[1:]) if name.endswith(".tsv") else ([], lines)
            write(f"k-shot/{task}/16-13/{name}", header + spread(body, 12 if name.startswith("train") else 8))
    rows = []
    for p, (passage, qas) in enumerate(DROP):
        for q, (question, answers) in enumerate(qas):
            rows.append(json.dumps({"section_id": f"handwritten_{p}", "query_id": f"handwritten_{p}_{q}",
                                    "passage": passage, "question": question,
                                    "answers_spans": {"spans": answers, "types": ["span"] * len(answers)}}) + "\n")
    write("drop/train.jsonl", rows[:8])
    write("drop/validation.jsonl", rows[8:])


if __name__ == "__main__":
    main()

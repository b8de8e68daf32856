"""Causal-LM tasks with MeZO's large-model templates (the table in templates.py).

The reference's sampling and training settings per task (large_models/tasks.py, mezo.sh):
the test split is `validation`; dev is 500 rows (100 for CB and Copa, whose train sets are
small); Copa, ReCoRD, SQuAD and DROP train with the LM loss on the gold continuation
(--train_as_classification False), the rest with CE over the candidates.
"""
from __future__ import annotations

from mezo.tasks.base import Sample, Task, _short
from mezo.tasks.templates import CAUSAL, copa_choice


def continuation(prompt: str, verbalized: str) -> str:
    """What verbalize() adds to encode(), both `.strip(" ")`-ed as the reference does."""
    verbalized = verbalized.strip(" ")
    if not verbalized.startswith(prompt):
        raise ValueError(f"verbalized text does not extend the prompt: {verbalized[:80]!r}")
    return verbalized[len(prompt):]


class TemplateTask(Task):
    """A task rendered by CAUSAL[name]: label words from the table or choices from the row."""

    def template_row(self, row: dict) -> dict:
        return row

    def choices(self, row: dict) -> list[str]:
        raise NotImplementedError   # tasks whose template has no `words`

    def label(self, row: dict) -> int:
        return int(row["label"])

    def label_values(self) -> tuple | None:
        words = CAUSAL[self.name].words
        return tuple(range(len(words))) if words and self.label_column else None

    def label_text(self) -> str:
        words = CAUSAL[self.name].words or ()
        return ", ".join(f"{i} ({w})" for i, w in enumerate(words)) or super().label_text()

    def gold(self, row: dict) -> list[int] | None:
        return None

    def gold_answers(self, row: dict) -> list[str]:
        raise NotImplementedError   # generation tasks

    def sample(self, row: dict) -> Sample:
        t = CAUSAL[self.name]
        encoded = t.prompt.format(**t.fields(self.template_row(row)))
        prompt = encoded.strip(" ")
        if self.kind == "generation":
            answers = self.gold_answers(row)
            target = continuation(prompt, encoded + t.answer.format(answers[0]))
            return Sample(prompt.lstrip(), [], None, answers, row, target=target)
        words = t.words if t.words is not None else self.choices(row)
        cands = [continuation(prompt, encoded + t.answer.format(w)) for w in words]
        return Sample(prompt.lstrip(), cands, self.label(row), None, row, gold=self.gold(row))


class SuperGLUE(TemplateTask):
    hf_path = "super_glue"

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        cls.data_path = cls.data_path or f"super_glue/{cls.hf_config}"


class RTE(SuperGLUE):
    name, hf_config = "RTE", "rte"
    columns = ("premise", "hypothesis")


class CB(SuperGLUE):
    name, hf_config, num_dev = "CB", "cb", 100
    columns = ("premise", "hypothesis")


class WSC(SuperGLUE):
    name, hf_config = "WSC", "wsc.fixed"
    columns = ("text", "span1_text", "span2_text")


class WiC(SuperGLUE):
    name, hf_config = "WiC", "wic"
    columns = ("word", "sentence1", "sentence2")


class MultiRC(SuperGLUE):
    name, hf_config = "MultiRC", "multirc"
    columns = ("paragraph", "question", "answer")


class BoolQ(TemplateTask):
    """google/boolq ({question, answer: bool, passage}), as the reference loads `boolq`.
    Candidates "Yes"/"No": label 0 when answer is true. The local copy has only validation
    (<data_dir>/boolq/validation.jsonl); its train split is absent, so training on BoolQ needs
    the hub. Rows in the super_glue/boolq layout (label 1 = True) are accepted too, but their
    passages carry a "Title -- " prefix the reference's data lacks."""
    name, hf_path, hf_config, data_path = "BoolQ", "boolq", None, "boolq"
    missing_note = " (the local data has no BoolQ train split; use the hub: --data_dir hub)"
    columns = ("question", "passage")
    label_column = None   # google/boolq's "answer" (a bool), or super_glue/boolq's "label" (0, 1)

    def label(self, row: dict) -> int:
        truth = row["answer"] if "answer" in row else bool(row["label"])
        return 0 if truth else 1

    def check_row(self, row: dict) -> str | None:
        problem = super().check_row(row)
        if problem:
            return problem
        if "answer" in row:
            return None if isinstance(row["answer"], bool) else \
                f"answer {_short(row['answer'])} is not true or false (google/boolq's label)"
        if "label" in row:
            v = row["label"]
            return None if v in (0, 1) and type(v) is int else \
                f"label {_short(v)} is not one of task BoolQ's labels: 0 (False), 1 (True)"
        return self.missing(row, ("answer",))


class Copa(SuperGLUE):
    name, hf_config, num_dev = "Copa", "copa", 100
    kind, train_loss = "multiple_choice", "lm"
    columns = ("premise", "choice1", "choice2")

    def choices(self, row: dict) -> list[str]:
        return [copa_choice(row["choice1"]), copa_choice(row["choice2"])]

    def label_values(self) -> tuple:
        return (0, 1)

    def label_text(self) -> str:
        return "0 (choice1), 1 (choice2)"

    def check_row(self, row: dict) -> str | None:
        problem = super().check_row(row) or self.missing(row, ("question",))
        if problem is None and row["question"] not in ("cause", "effect"):
            problem = f"question {row['question']!r} is neither 'cause' nor 'effect'"
        return problem


class ReCoRD(SuperGLUE):
    """Candidates: " " + query with @placeholder -> entity, one per entity (row order).
    label = the first gold answer's entity (what the LM loss trains on); gold = all of them."""
    name, hf_config = "ReCoRD", "record"
    kind, train_loss = "multiple_choice", "lm"
    columns, label_column = ("passage", "query"), None

    def check_row(self, row: dict) -> str | None:
        problem = super().check_row(row) or self.missing(row, ("entities", "answers"))
        if problem:
            return problem
        if not isinstance(row["entities"], list) or not row["entities"]:
            return f"entities {row['entities']!r} is not a non-empty list of candidate entities"
        if not isinstance(row["answers"], list) or any(a not in row["entities"] for a in row["answers"][:1]):
            return f"answers {row['answers']!r}: the first answer must be one of the entities"
        return None

    def choices(self, row: dict) -> list[str]:
        return [row["query"].replace("@placeholder", e) for e in row["entities"]]

    def label(self, row: dict) -> int:
        return row["entities"].index(row["answers"][0]) if row["answers"] else None

    def gold(self, row: dict) -> list[int]:
        return [row["entities"].index(a) for a in row["answers"] if a in row["entities"]]


class SQuAD(TemplateTask):
    name, hf_path, hf_config, data_path = "SQuAD", "squad", None, "squad/plain_text"
    kind, metric, train_loss = "generation", "f1", "lm"
    columns, label_column, answers = ("context", "question"), None, ("answers", "text")

    def check_row(self, row: dict) -> str | None:
        return super().check_row(row) or _check_answers(self, row)

    def gold_answers(self, row: dict) -> list[str]:
        return list(row["answers"]["text"])


class DROP(TemplateTask):
    """The reference scores DROP with the SQuAD F1 over the gold spans (metric "f1");
    mezo.metrics.drop_f1 is the official bag-of-words F1 for comparison. No local copy."""
    name, hf_path, hf_config, data_path = "DROP", "drop", None, "drop"
    kind, metric, train_loss = "generation", "f1", "lm"
    columns, label_column, answers = ("passage", "question"), None, ("answers_spans", "spans")

    def gold_answers(self, row: dict) -> list[str]:
        return list(row["answers_spans"]["spans"])

    def check_row(self, row: dict) -> str | None:
        return super().check_row(row) or _check_answers(self, row)


def _check_answers(task, row: dict) -> str | None:
    """Generation tasks: the gold answers, a non-empty list of strings under task.answers."""
    col, key = task.answers
    problem = task.missing(row, (col,))
    if problem:
        return problem
    gold = row[col].get(key) if isinstance(row[col], dict) else None
    if not (isinstance(gold, list) and gold and all(isinstance(a, str) for a in gold)):
        return f"{col} {_short(row[col])} has no gold answer texts ({col}[{key!r}]: a non-empty list of strings)"
    return None

"""Every prompt template and verbalizer, as data, in one place.

CAUSAL: MeZO's large-model templates (large_models/templates.py, the default template of each
task). `prompt` is the reference's encode(), formatted over `fields(row)`; the reference's
verbalize(row, c) is that same text followed by `answer.format(c)`. A candidate is what
verbalize adds to encode once both are `.strip(" ")`-ed, as the reference's encode_prompt
measures its option tokens: " great" after "... It was", "Yes" after "...Yes or No?\\n".
`words` is the verbalizer indexed by the dataset's label id; where it is None the candidates
come from the row (Copa's choices, ReCoRD's entities, the gold answer of SQuAD / DROP).

MLM: the LM-BFF templates and label words that MeZO's medium models (RoBERTa-large) use
(medium_models/run_fewshot.sh), in LM-BFF's template language; `words` is indexed by the
Hugging Face label id of the task's data (not LM-BFF's label order). See mlm.py for how a
template is rendered.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class Template:
    prompt: str                                  # encode(), a str.format pattern over fields(row)
    answer: str = "{}"                           # verbalize() = encode() + answer.format(candidate)
    words: tuple[str, ...] | None = None         # verbalizer by label id (None: from the row)
    fields: Callable[[dict], dict] = dict        # row -> the names the patterns use


def _boolq(row: dict) -> dict:
    q = row["question"] if row["question"].endswith("?") else row["question"] + "?"
    return {"passage": row["passage"], "question": q[0].upper() + q[1:]}


def _copa(row: dict) -> dict:
    premise = row["premise"].rstrip()
    premise = premise[:-1] if premise.endswith(".") else premise
    conj = {"cause": " because ", "effect": " so "}[row["question"]]
    return {"premise": premise, "conj": conj}


def copa_choice(choice: str) -> str:
    """CopaTemplate.capitalize ("correct"): lower-case the first word unless it is "I"."""
    words = choice.split(" ")
    if words[0] != "I":
        words[0] = words[0].lower()
    return " ".join(words)


def _record(row: dict) -> dict:
    return {"passage": row["passage"].replace("@highlight\n", "- ")}


def _qa(row: dict) -> dict:   # SQuAD (title, context) and DROP (passage) rows
    return {"title": row.get("title", ""), "context": row.get("context", row.get("passage")),
            "question": row["question"].strip()}


YES_NO_Q = "Yes or No?\n"

CAUSAL: dict[str, Template] = {
    "SST2": Template("{sentence} It was", " {}", ("terrible", "great"),
                     lambda r: {"sentence": r["sentence"].strip()}),
    "RTE": Template('{premise}\nDoes this mean that "{hypothesis}" is true? ' + YES_NO_Q,
                    words=("Yes", "No")),                     # 0 entailment, 1 not_entailment
    "CB": Template('Suppose {premise} Can we infer that "{hypothesis}"? Yes, No, or Maybe?\n',
                   words=("Yes", "No", "Maybe")),             # entailment, contradiction, neutral
    "BoolQ": Template("{passage} {question}\n", words=("Yes", "No"), fields=_boolq),  # V3
    "WSC": Template('{text}\nIn the previous sentence, does the pronoun "{pronoun}" refer to '
                    '{span1_text}? ' + YES_NO_Q, words=("No", "Yes"),
                    fields=lambda r: {**r, "pronoun": r["span2_text"].lower()}),
    "WiC": Template('Does the word "{word}" have the same meaning in these two sentences? '
                    'Yes, No?\n{sentence1}\n{sentence2}\n', words=("No", "Yes")),
    "MultiRC": Template('{paragraph}\nQuestion: {question}\nI found this answer "{answer}". '
                        'Is that correct? ' + YES_NO_Q, words=("No", "Yes")),
    # candidates: copa_choice(choice1), copa_choice(choice2)
    "Copa": Template("{premise}{conj}", fields=_copa),
    # ReCoRDTemplateGPT3; candidates: the query with @placeholder replaced by each entity
    "ReCoRD": Template("{passage}\n-", " {}", fields=_record),
    # SQuADv2Template / DROPTemplate; the gold continuation is " <answers[0]>\n"
    "SQuAD": Template("Title: {title}\nContext: {context}\nQuestion: {question}\nAnswer:",
                      " {}\n", fields=_qa),
    "DROP": Template("Passage: {context}\nQuestion: {question}\nAnswer:", " {}\n", fields=_qa),
}


@dataclass(frozen=True)
class MLMTemplate:
    template: str                      # LM-BFF template language (see mlm.render_lmbff)
    words: tuple[str, ...]             # label words by HF label id; candidates are " " + word
    first_sent_limit: int | None = None   # LM-BFF per-sentence token limits (run_fewshot.sh)
    other_sent_limit: int | None = None
    max_seq_len: int | None = None     # the script's --max_seq_len where it sets one (else 128)
    extra: dict = field(default_factory=dict)


SENT = "*cls**sent_0*_It_was*mask*.*sep+*"
NLI = "*cls**sent-_0*?*mask*,*+sentl_1**sep+*"

MLM: dict[str, MLMTemplate] = {
    "SST-2": MLMTemplate(SENT, ("terrible", "great")),
    "sst-5": MLMTemplate(SENT, ("terrible", "bad", "okay", "good", "great"),
                         first_sent_limit=110, other_sent_limit=20),
    # HF coarse_label order ABBR, ENTY, DESC, HUM, LOC, NUM (LM-BFF: DESC, ENTY, ABBR, ...)
    "trec": MLMTemplate("*cls**mask*:*+sent_0**sep+*",
                        ("Expression", "Entity", "Description", "Human", "Location", "Number"),
                        first_sent_limit=110),
    # HF order entailment, neutral, contradiction
    "MNLI": MLMTemplate(NLI, ("Yes", "Maybe", "No"), first_sent_limit=240, max_seq_len=256),
    "SNLI": MLMTemplate(NLI, ("Yes", "Maybe", "No"), max_seq_len=256),
    # HF order entailment, not_entailment
    "RTE": MLMTemplate(NLI, ("Yes", "No"), first_sent_limit=240, max_seq_len=256),
}

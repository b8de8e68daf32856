"""Task layer: templates rendered on real rows, sampling sizes, ICL, LM-BFF k-shot data.

Data: $MEZO_DATA_DIR or ../shared/data when present, else the real rows copied into tests/data.
"""
from __future__ import annotations

import json
import os

import pytest

from helpers import ROOT

from mezo.tasks import (MLM_TASKS, TASKS, Sample, demo_sets, find_data_dir, get_task, icl_prompt,
                        kshot_splits, kshot_test, left_truncate, load_kshot, make_splits)
from mezo.tasks.mlm import kshot_rows

# $MEZO_DATA_DIR or the full shared/data when present, else the real rows copied into tests/data
# (tests/data/make_test_data.py): templates, ICL and metrics run on either. A few tests check
# sampling sizes and the LM-BFF k-shot files against the full splits; they need the full copy.
LOCAL = os.path.join(ROOT, "tests", "data")
FULL = find_data_dir(os.path.join(ROOT, "tests"))
DATA = FULL or LOCAL
needs_data = pytest.mark.skipif(not os.path.isdir(DATA), reason="tests/data missing and MEZO_DATA_DIR unset")
needs_full_data = pytest.mark.skipif(FULL is None, reason="needs the full ../shared/data (or MEZO_DATA_DIR)")


def rows(task, split):
    path = task.split_file(DATA, split)
    if not os.path.exists(path):
        pytest.skip(f"{task.name}: {path} is not in the local data")
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def first(name, split="validation", family="causal"):
    task = get_task(name, family=family)
    return task, rows(task, split)[0]


# ------------------------------------------------------------------------------ registry
ATTRS = {  # name: (kind, metric, train_loss, num_dev)
    "SST2": ("classification", "accuracy", "classification", 500),
    "RTE": ("classification", "accuracy", "classification", 500),
    "CB": ("classification", "accuracy", "classification", 100),
    "BoolQ": ("classification", "accuracy", "classification", 500),
    "WSC": ("classification", "accuracy", "classification", 500),
    "WiC": ("classification", "accuracy", "classification", 500),
    "MultiRC": ("classification", "accuracy", "classification", 500),
    "Copa": ("multiple_choice", "accuracy", "lm", 100),
    "ReCoRD": ("multiple_choice", "accuracy", "lm", 500),
    "SQuAD": ("generation", "f1", "lm", 500),
    "DROP": ("generation", "f1", "lm", 500),
}


@pytest.mark.parametrize("name", sorted(ATTRS))
def test_causal_attributes(name):
    t = get_task(name)
    assert (t.kind, t.metric, t.train_loss, t.num_dev) == ATTRS[name]
    assert t.eval_split == "validation" and t.family == "causal"


def test_registry():
    assert len(TASKS) == 11 and len(MLM_TASKS) == 6
    assert get_task("sst-2").name == "SST2" and get_task("SST-2", family="mlm").name == "SST-2"
    assert (get_task("wsc").hf_path, get_task("wsc").hf_config) == ("super_glue", "wsc.fixed")
    assert get_task("boolq").data_path == "boolq" and get_task("squad").data_path == "squad/plain_text"
    assert get_task("trec", family="roberta").family == "mlm"
    with pytest.raises(KeyError):
        get_task("nope")


# ---------------------------------------------------------------- causal templates, real rows
@needs_data
def test_sst2():
    t, row = first("SST2")
    s = t.sample(row)
    assert s.prompt == "one long string of cliches . It was"
    assert s.candidates == [" terrible", " great"] and s.label == 0


@needs_data
def test_rte():
    t, row = first("RTE")
    s = t.sample(row)
    assert s.prompt == ("Dana Reeve, the widow of the actor Christopher Reeve, has died of lung cancer at "
                        "age 44, according to the Christopher Reeve Foundation.\nDoes this mean that "
                        "\"Christopher Reeve had an accident.\" is true? Yes or No?\n")
    assert s.candidates == ["Yes", "No"] and s.label == 1


@needs_data
def test_cb():
    t, row = first("CB")
    s = t.sample(row)
    assert s.prompt == ("Suppose Valence the void-brain, Valence the virtuous valet. Why couldn't the figger "
                        "choose his own portion of titanic anatomy to shaft? Did he think he was helping? "
                        "Can we infer that \"Valence was helping\"? Yes, No, or Maybe?\n")
    assert s.candidates == ["Yes", "No", "Maybe"] and s.label == 1


@needs_data
def test_boolq(tmp_path):
    t, row = first("BoolQ")
    s = t.sample(row)
    assert s.prompt == row["passage"] + " Does ethanol take more energy make that produces?\n"
    assert s.prompt.startswith("All biomass goes through at least some of these steps:")
    assert s.candidates == ["Yes", "No"] and s.label == 1   # answer false -> "No"
    os.makedirs(tmp_path / "boolq")  # like ../shared/data: validation only
    (tmp_path / "boolq" / "validation.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(FileNotFoundError, match="no BoolQ train"):
        t.load_split("train", str(tmp_path))


@needs_data
def test_wsc():
    t = get_task("WSC")
    r = rows(t, "validation")
    s = t.sample(r[0])
    assert s.prompt == ("Bernard , who had not told the government official that he was less than 21 when he "
                        "filed for a homestead claim, did not consider that he had done anything dishonest. "
                        "Still, anyone who knew that he was 19 years old could take his claim away from him ."
                        "\nIn the previous sentence, does the pronoun \"him\" refer to anyone? Yes or No?\n")
    assert s.candidates == ["No", "Yes"] and s.label == 0
    s1 = t.sample(r[1])   # span1 keeps its case, the pronoun is lower-cased
    assert s1.prompt.endswith("does the pronoun \"his\" refer to Mr. Moncrieff? Yes or No?\n") and s1.label == 1


@needs_data
def test_wic():
    t, row = first("WiC")
    s = t.sample(row)
    assert s.prompt == ("Does the word \"class\" have the same meaning in these two sentences? Yes, No?\n"
                        "An emerging professional class.\nApologizing for losing your temper, even though "
                        "you were badly provoked, showed real class.\n")
    assert s.candidates == ["No", "Yes"] and s.label == 0


@needs_data
def test_multirc():
    t, row = first("MultiRC")
    s = t.sample(row)
    assert s.prompt == (row["paragraph"] + "\nQuestion: Would the mass of a baseball affect how much force "
                        "you have to use to pick it up?\nI found this answer \"No\". Is that correct? Yes or No?\n")
    assert s.prompt.startswith("What causes a change in motion? The application of a force.")
    assert s.candidates == ["No", "Yes"] and s.label == 0


@needs_data
def test_copa():
    t = get_task("Copa")
    r = rows(t, "validation")
    s = t.sample(r[0])
    assert s.prompt == "The man turned on the faucet so"
    assert s.candidates == [" the toilet filled with water.", " water flowed from the spout."] and s.label == 1
    s3, s4 = t.sample(r[3]), t.sample(r[4])
    assert s3.prompt == "I wanted to conserve energy so"   # "I" keeps its capital
    assert s3.candidates == [" I swept the floor in the unoccupied room.", " I shut off the light in the unoccupied room."]
    assert s4.prompt == "The hamburger meat browned because"
    assert s4.candidates == [" the cook froze it.", " the cook grilled it."]


@needs_data
def test_record():
    t, row = first("ReCoRD")
    s = t.sample(row)
    assert "@highlight" not in s.prompt
    assert s.prompt.endswith("ago in a gun-suicide bomb attack\n- Thousands gathered near the home to mark "
                             "the fifth anniversary of her death\n-")
    assert s.prompt.startswith("Islamabad, Pakistan (CNN) -- The 24-year-old son")
    assert "crime.\n- NEW: Kill a Bhutto and another will emerge" in s.prompt
    assert len(s.candidates) == 11
    assert s.candidates[2] == " They will sew our lips, but we will chant, 'Long live Benazir Bhutto.'"
    assert s.label == 2 and s.gold == [2, 3] and s.gold_ids == [2, 3]


@needs_data
def test_squad():
    t, row = first("SQuAD")
    s = t.sample(row)
    assert s.prompt == ("Title: Super_Bowl_50\nContext: " + row["context"] +
                        "\nQuestion: Which NFL team represented the AFC at Super Bowl 50?\nAnswer:")
    assert s.prompt.startswith("Title: Super_Bowl_50\nContext: Super Bowl 50 was an American football game")
    assert s.candidates == [] and s.answers == ["Denver Broncos"] * 3
    assert s.target == " Denver Broncos\n" and s.gold_text() == " Denver Broncos\n"


def test_drop_without_data():
    # no DROP in shared/data: a hand-made row in the HF `drop` layout
    row = {"passage": "The Bears scored 7 points.", "question": " How many points? ",
           "answers_spans": {"spans": ["7"], "types": ["number"]}}
    s = get_task("DROP").sample(row)
    assert s.prompt == "Passage: The Bears scored 7 points.\nQuestion: How many points?\nAnswer:"
    assert s.answers == ["7"] and s.target == " 7\n"


@needs_data
def test_drop_data_absent():
    if os.path.exists(get_task("DROP").split_file(DATA, "validation")):
        pytest.skip("DROP present")
    with pytest.raises(FileNotFoundError):
        get_task("DROP").load_split("validation", DATA)


# ------------------------------------------------------------------------------ sampling
@needs_full_data
@pytest.mark.parametrize("name,sizes", [("SST2", (1000, 500, 872)), ("RTE", (1000, 500, 277)),
                                        ("CB", (150, 100, 56)), ("Copa", (300, 100, 100))])
def test_sampling_sizes(name, sizes):
    t = get_task(name)
    sp = make_splits(t, rows(t, "train"), rows(t, "validation"), num_train=1000, num_dev=None,
                     num_eval=1000, train_set_seed=0)
    assert (len(sp.train), len(sp.dev), len(sp.test)) == sizes
    assert not {id(s.data) for s in sp.train} & {id(s.data) for s in sp.dev}


@needs_data
@pytest.mark.parametrize("name,default_dev", [("SST2", 500), ("CB", 100), ("Copa", 100)])
def test_sampling_sizes_and_dev_defaults_on_any_copy(name, default_dev):
    """The same rules on however many rows the copy has: train and dev cut from one permutation
    of train, test capped; the default dev size is the reference's (100 for CB and Copa)."""
    t = get_task(name)
    assert t.num_dev == default_dev
    tr, ev = rows(t, "train"), rows(t, "validation")
    sp = make_splits(t, tr, ev, num_train=10, num_dev=5, num_eval=7, train_set_seed=0)
    assert (len(sp.train), len(sp.dev), len(sp.test)) == (10, 5, min(7, len(ev)))
    assert not {id(s.data) for s in sp.train} & {id(s.data) for s in sp.dev}


@needs_data
def test_sampling_seeds_like_reference():
    import numpy as np
    t = get_task("RTE")
    tr, ev = rows(t, "train"), rows(t, "validation")
    sp = make_splits(t, tr, ev, num_train=16, num_dev=4, num_eval=10, train_set_seed=3)
    idx = np.random.RandomState(3).permutation(len(tr))[:20]
    assert [s.data["idx"] for s in sp.train + sp.dev] == [tr[i]["idx"] for i in idx]
    assert [s.data["idx"] for s in sp.test] == [ev[i]["idx"] for i in np.random.RandomState(3).permutation(len(ev))[:10]]


# ------------------------------------------------------------------------------ ICL
def test_icl_prompt():
    d1 = Sample("A It was", [" terrible", " great"], 1)
    d2 = Sample("Q?\nAnswer:", [], answers=["x"], target=" x\n")
    s = Sample("B It was", [" terrible", " great"], 0)
    assert icl_prompt(None, [d1, d2], s) == "A It was great\n\nQ?\nAnswer: x\n\nB It was"
    assert icl_prompt(None, [], s) == "B It was"
    count = lambda text: len(text.split())   # noqa: E731
    assert icl_prompt(None, [d1, d2], s, max_tokens=8, count_tokens=count) == "Q?\nAnswer: x\n\nB It was"
    assert icl_prompt(None, [d1, d2], s, max_tokens=2, count_tokens=count) == "B It was"


@needs_data
def test_icl_real_rows():
    t = get_task("RTE")
    tr = [t.sample(r) for r in rows(t, "train")]
    demos = demo_sets(tr, 2, train_set_seed=0)[0]
    s = t.sample(rows(t, "validation")[0])
    ctx = icl_prompt(t, demos, s)
    parts = ctx.split("\n\n")
    assert parts[-1] == s.prompt and len(parts) == 3
    assert parts[0] == (demos[0].prompt + demos[0].candidates[demos[0].label]).strip()
    per_eval = demo_sets(tr, 4, num_eval=5)
    assert len(per_eval) == 5 and all(len(d) == 4 for d in per_eval)


def test_left_truncate():
    assert left_truncate([0, 1, 2, 3, 4], 3) == [0, 3, 4]
    assert left_truncate([0, 1, 2, 3, 4], 3, keep_first=False) == [2, 3, 4]
    assert left_truncate([0, 1], 3) == [0, 1]


# ------------------------------------------------------------------------------ masked LM
@needs_data
@pytest.mark.parametrize("name,split,prompt,cands,label", [
    ("SST-2", "validation", "one long string of cliches . It was<mask>.", [" terrible", " great"], 0),
    ("SST-5", "test", "no movement , no yuks , not much of anything . It was<mask>.",
     [" terrible", " bad", " okay", " good", " great"], 1),
    ("TREC", "test", "<mask>: How far is it from Denver to Aspen ?",
     [" Expression", " Entity", " Description", " Human", " Location", " Number"], 5),
    ("SNLI", "train", "Two people lower themselves into a cave with long ropes?<mask>, two people leave a cave",
     [" Yes", " Maybe", " No"], 2),
    ("MNLI", "train", "Our hearts are particularly heavy this year as we look back at those we've lost, the "
     "Globe writes lovingly?<mask>, we are especially sad this year because we lost a lot of people.",
     [" Yes", " Maybe", " No"], 0),
    ("RTE", "validation", "Dana Reeve, the widow of the actor Christopher Reeve, has died of lung cancer at age "
     "44, according to the Christopher Reeve Foundation?<mask>, christopher Reeve had an accident.",
     [" Yes", " No"], 1),
])
def test_mlm_render(name, split, prompt, cands, label):
    t, row = first(name, split, family="mlm")
    s = t.sample(row)
    assert (s.prompt, s.candidates, s.label) == (prompt, cands, label)
    assert t.kind == "classification" and t.train_loss == "classification"


@needs_full_data
@pytest.mark.parametrize("name,k,n_cls", [("SST-5", 16, 5), ("TREC", 16, 6), ("SNLI", 16, 3),
                                          ("RTE", 16, 2), ("SST-2", 512, 2)])
def test_kshot_counts(name, k, n_cls):
    from collections import Counter
    t = get_task(name, family="mlm")
    sp = kshot_splits(t, rows(t, "train"), k, 13)
    for part in (sp.train, sp.dev):
        assert Counter(s.label for s in part) == {c: k for c in range(n_cls)}
    assert not {id(s.data) for s in sp.train} & {id(s.data) for s in sp.dev}


@needs_full_data
@pytest.mark.parametrize("seed", [13, 21, 42, 87, 100])
def test_kshot_reproduces_lmbff_files(seed):
    trec = get_task("TREC", family="mlm")   # same source order as LM-BFF: the files exactly
    tr, dv = kshot_rows(trec, rows(trec, "train"), 16, seed)
    f = load_kshot(trec, DATA, 16, seed)
    assert [(r["text"], r["coarse_label"]) for r in tr] == [(r["text"], r["coarse_label"]) for r in f["train"]]
    assert [(r["text"], r["coarse_label"]) for r in dv] == [(r["text"], r["coarse_label"]) for r in f["dev"]]
    rte = get_task("RTE", family="mlm")     # GLUE RTE = super_glue/rte: the same rows by idx
    tr, dv = kshot_rows(rte, rows(rte, "train"), 16, seed)
    f = load_kshot(rte, DATA, 16, seed)
    assert [r["idx"] for r in tr + dv] == [r["idx"] for r in f["train"] + f["dev"]]


@needs_full_data
def test_load_kshot_formats_and_trec_remap():
    trec = get_task("TREC", family="mlm")
    f = load_kshot(trec, DATA, 16, 13)
    assert {k: len(v) for k, v in f.items()} == {"train": 96, "dev": 96, "test": 500}
    by_text = {r["text"]: r["coarse_label"] for r in f["train"]}
    assert by_text["What is LMDS ?"] == 0                    # LM-BFF 2 (ABBR) -> HF 0
    assert by_text["What happens to the female body with lack of sleep and food ?"] == 2   # DESC
    assert by_text["What university fired Angela Davis ?"] == 3                              # HUM
    assert f["test"][0] == {"text": "How far is it from Denver to Aspen ?", "coarse_label": 5}
    sst2 = load_kshot(get_task("SST-2", family="mlm"), DATA, 16, 13)
    assert sst2["train"][0] == {"sentence": "nothing happens , and it happens to flat characters .", "label": 0}
    assert len(sst2["test"]) == 872
    sst5 = load_kshot(get_task("SST-5", family="mlm"), DATA, 16, 13)
    assert sst5["test"][2] == {"text": "` how many more voyages can this limping but dearly-loved franchise "
                                       "survive ? '", "label": 2}
    rte = load_kshot(get_task("RTE", family="mlm"), DATA, 16, 13)
    assert rte["test"][0]["label"] == 1 and rte["train"][0]["idx"] == 659
    mnli = load_kshot(get_task("MNLI", family="mlm"), DATA, 16, 13)
    assert set(mnli) == {"train", "dev"} and len(mnli["dev"]) == 48   # test_matched not local
    snli = load_kshot(get_task("SNLI", family="mlm"), DATA, 16, 13)
    assert sorted({r["label"] for r in snli["train"]}) == [0, 1, 2]


@needs_full_data
def test_kshot_test_1k():
    pd = pytest.importorskip("pandas")
    t = get_task("SST-5", family="mlm")
    test = kshot_test(t, rows(t, "test"))
    assert len(test) == 1000
    ref = pd.read_csv(os.path.join(DATA, "k-shot/sst-5/16-13/test.csv"), header=None).sample(n=1000, random_state=42)
    norm = lambda x: x.replace("-lrb-", "(").replace("-rrb-", ")")   # noqa: E731 (SetFit vs LM-BFF text)
    assert [norm(s.data["text"]) for s in test] == [norm(x) for x in ref[1].tolist()]
    trec = get_task("TREC", family="mlm")
    assert len(kshot_test(trec, rows(trec, "test"))) == 500


# ------------------------------------------------------------------------------ LM-BFF sequence limits
@pytest.fixture(scope="module")
def mlm_tok(tmp_path_factory):
    from transformers import AutoTokenizer

    from helpers import build_roberta
    return AutoTokenizer.from_pretrained(build_roberta(str(tmp_path_factory.mktemp("lmbff_tok"))))


def _enc(tok, text):
    return tok(text, add_special_tokens=False).input_ids


def _reference_nli(tok, premise, hypothesis, first_limit, max_len):
    """LM-BFF's tokenize_multipart_input for *cls**sent-_0*?*mask*,*+sentl_1**sep+*, written out:
    each part on its own, sentence 0 cut to first_sent_limit, the whole cut from the tail."""
    ids = [tok.cls_token_id] + _enc(tok, premise[:-1])[:first_limit] + [tok.convert_tokens_to_ids("?")] + \
        [tok.mask_token_id] + [tok.convert_tokens_to_ids(",")] + \
        _enc(tok, " " + hypothesis[:1].lower() + hypothesis[1:]) + [tok.sep_token_id]
    return ids[:max_len]


@needs_data
def test_lmbff_first_sentence_limit_sst5(mlm_tok):
    """SST-5: --first_sent_limit 110 (run_fewshot.sh). A real review longer than 110 tokens keeps
    its first 110, the template part " It was" follows whole; before, the text was tokenised in
    one piece and nothing was cut."""
    from mezo.scoring import Encoder
    task = get_task("SST-5", family="mlm")
    long = [r for r in rows(task, "train") if len(_enc(mlm_tok, r["text"])) > 110]
    if not long:
        pytest.skip("no SST-5 row over 110 tokens with this tokenizer")
    s = task.sample(long[0])
    tok = mlm_tok
    want = [tok.cls_token_id] + _enc(tok, s.data["text"])[:110] + _enc(tok, " It was") + [tok.mask_token_id] + \
        [tok.convert_tokens_to_ids(".")] + [tok.sep_token_id]
    e = Encoder(tok, 512, family="mlm").encode(s)
    assert e.prompt == want and e.prompt[e.mask_pos] == tok.mask_token_id
    assert e.prompt != tok(s.prompt.replace("<mask>", tok.mask_token)).input_ids  # the old whole-text input


@needs_data
def test_lmbff_nli_limits_rte(mlm_tok):
    """RTE: --first_sent_limit 240 --max_seq_len 256: the premise cut to 240 tokens, the whole
    sequence cut from the tail to 256; a model with a shorter context caps that (here 128)."""
    from mezo.scoring import Encoder
    task = get_task("RTE", family="mlm")
    data = rows(task, "train")
    long = [r for r in data if len(_enc(mlm_tok, r["premise"])) > 240]
    assert long
    for r in long + data[:5]:
        s = task.sample(r)
        want = _reference_nli(mlm_tok, r["premise"], r["hypothesis"], 240, 256)
        assert Encoder(mlm_tok, 512, family="mlm").encode(s).prompt == want
        assert len(want) <= 256
    short = Encoder(mlm_tok, 128, family="mlm").encode(task.sample(long[0]))
    assert len(short.prompt) == 128 and short.prompt[short.mask_pos] == mlm_tok.mask_token_id


@needs_data
def test_lmbff_keeps_the_mask_where_the_tail_cut_would_drop_it(mlm_tok):
    """SNLI has no sentence limit (max 256): a premise long enough to push the mask past 256 tokens
    (LM-BFF stops with an assertion there) is cut from the head instead, <s> kept."""
    from mezo.scoring import Encoder
    task = get_task("SNLI", family="mlm")
    r = dict(rows(task, "train")[0])
    r["premise"] = " ".join([r["premise"]] * 40)
    e = Encoder(mlm_tok, 512, family="mlm").encode(task.sample(r))
    assert len(e.prompt) == 256 and e.prompt[0] == mlm_tok.cls_token_id
    assert e.prompt[e.mask_pos] == mlm_tok.mask_token_id and e.prompt[-1] == mlm_tok.sep_token_id


def test_kshot_warns_when_a_class_has_fewer_than_2k_rows(caplog):
    """k per class for train and k for dev: a class with fewer rows gives unbalanced splits, said
    in one warning line naming the class and its count (LM-BFF's generator is silent)."""
    sst2 = get_task("SST-2", family="mlm")
    pos = [{"sentence": f"good {i}", "label": 1} for i in range(40)]
    neg = [{"sentence": f"bad {i}", "label": 0} for i in range(20)]
    with caplog.at_level("WARNING", logger="mezo"):
        tr, dv = kshot_rows(sst2, pos + neg, 16, 13)
    from collections import Counter
    assert Counter(sst2.label(r) for r in tr) == {0: 16, 1: 16}
    assert Counter(sst2.label(r) for r in dv) == {0: 4, 1: 16}
    msgs = [r.getMessage() for r in caplog.records if r.name == "mezo"]
    assert msgs == ["SST-2: k=16 per class needs 32 train rows per class (train + dev); class 0 has 20: "
                    "train and dev get fewer, unbalanced"]
    caplog.clear()
    with caplog.at_level("WARNING", logger="mezo"):
        kshot_rows(sst2, pos + neg, 8, 13)
    assert not [r for r in caplog.records if r.name == "mezo"]

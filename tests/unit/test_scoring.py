"""Truncation as the reference (issue 13, item 8): princeton-nlp/MeZO large_models/utils.py
encode_prompt tokenises each prompt + candidate sequence and cuts each on its own from the left
to max_length, keeping a leading BOS (`encoding[0:1] + encoding[1:][-(max_length - 1):]`); for
generation tasks max_length is first lowered by max_new_tokens (2048 - 50 = 1998), for the
prompt alone (evaluation) and for prompt + gold (training) alike. Before, the prompt was cut
once, by the longest candidate (and by max(gold, max_new_tokens) for generation). Real rows
from tests/data, a tiny OPT (its tokenizer adds a BOS)."""
import json
import os

import pytest
import torch
import torch.nn.functional as F

from helpers import TEST_DATA, build_model

from mezo import models
from mezo.scoring import Encoder, candidate_scores, lm_losses
from mezo.tasks import get_task

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def opt(tmp_path_factory):
    model, tok = models.load(build_model(str(tmp_path_factory.mktemp("tiny_opt_trunc")), arch="opt"), None, "fp32",
                             CPU, "causal")
    return model, tok


def _rows(task):
    path = task.split_file(TEST_DATA, task.eval_split)
    if not os.path.exists(path):
        pytest.skip(f"{path} absent")
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def reference_cut(seq: list[int], max_length: int) -> list[int]:
    """encode_prompt's cut with tokenizer.add_bos_token."""
    return seq[0:1] + seq[1:][-(max_length - 1):] if len(seq) > max_length else seq


def _copa(tok, max_length):
    task = get_task("Copa")
    enc = Encoder(tok, max_length, model_type="opt")
    for row in _rows(task):
        s = task.sample(row)
        e = enc.encode(s)
        lens = [len(c) for c in e.cands]
        if len(set(lens)) > 1 and len(e.full) + min(lens) > max_length and max(lens) < max_length - 1:
            return s, e, enc
    pytest.skip("no Copa row with candidates of different lengths that needs a cut")


def test_each_candidate_sequence_is_cut_on_its_own(opt):
    model, tok = opt
    L = 20
    s, e, enc = _copa(tok, L)
    for c in e.cands:
        assert e.prompt_for(len(c)) + c == reference_cut(e.full + c, L)
    short = min(e.cands, key=len)
    assert len(e.prompt_for(len(short))) > len(e.prompt)  # the old single cut (longest candidate) kept less
    # the scores are those of the reference's per-candidate sequences, each run on its own (no padding)
    with torch.no_grad():
        got = candidate_scores(model, enc, [s])[0]
        want = []
        for c in e.cands:
            seq = reference_cut(e.full + c, L)
            lp = F.log_softmax(model(input_ids=torch.tensor([seq])).logits[0, :-1].float(), -1)
            want.append(lp[torch.arange(len(seq) - 1), torch.tensor(seq[1:])][-len(c):].mean())
    # batched (left-padded) vs one sequence at a time: the same arithmetic up to float32 rounding
    # of differently shaped matmuls (measured ~1e-7 on this model)
    torch.testing.assert_close(got, torch.stack(want), rtol=0, atol=1e-5)


def test_lm_loss_cuts_prompt_plus_gold(opt):
    """Copa trains on the gold continuation (train_as_classification False): prompt + gold is one
    sequence cut to max_length."""
    model, tok = opt
    L = 20
    s, e, enc = _copa(tok, L)
    assert e.prompt_for(len(e.gold)) + e.gold == reference_cut(e.full + e.gold, L)
    with torch.no_grad():
        nll, count = lm_losses(model, enc, [s])
        seq = reference_cut(e.full + e.gold, L)
        lp = F.log_softmax(model(input_ids=torch.tensor([seq])).logits[0, :-1].float(), -1)
        want = -lp[torch.arange(len(seq) - 1), torch.tensor(seq[1:])][-len(e.gold):].sum()
    assert count == [len(e.gold)]
    torch.testing.assert_close(nll[0], want, rtol=0, atol=1e-5)  # as above: padding vs none


def test_generation_leaves_room_for_max_new_tokens(opt):
    """SQuAD: the prompt (evaluation) and prompt + gold (training) are both cut to max_length -
    max_new_tokens (1998 in the reference); before, both to max_length - max(gold, max_new_tokens)."""
    _, tok = opt
    task = get_task("SQuAD")
    L, new = 64, 10
    enc = Encoder(tok, L, model_type="opt", max_new_tokens=new)
    s = next(task.sample(r) for r in _rows(task) if len(enc.encode(task.sample(r)).full) > L)
    e = enc.encode(s)
    assert e.limit == L - new
    assert e.prompt == reference_cut(e.full, L - new) and len(e.prompt) == L - new
    assert enc(s)[0] == e.prompt  # what generate() reads
    assert e.prompt_for(len(e.gold)) + e.gold == reference_cut(e.full + e.gold, L - new)
    # at the reference's sizes: 2048 - 50
    assert Encoder(tok, 2048, model_type="opt", max_new_tokens=50).encode(s).limit == 1998


def test_nothing_cut_means_the_whole_prompt_everywhere(opt):
    """Without truncation every candidate follows the same, whole prompt (the shared-prompt path
    of single-token candidates is then the reference's too)."""
    _, tok = opt
    task = get_task("SST2")
    enc = Encoder(tok, 2048, model_type="opt")
    for row in _rows(task)[:5]:
        e = enc.encode(task.sample(row))
        assert e.prompt == e.full and all(e.prompt_for(len(c)) == e.full for c in e.cands)
        assert e.full[0] == 0  # OPT: the reference's first token id 0

"""Prefixes take no positions, as the reference's (princeton-nlp/MeZO large_models/prefix.py
injects the prefix keys/values inside each attention module, so the decoder numbers the real
tokens from 0 as without a prefix): a prefix-tuned model feeds its position embeddings (OPT's
learned table, Llama's rotary embedding) exactly the positions of the plain model, in the
scoring forward and in every step of generation."""
import pytest
import torch

from helpers import build_model
from mezo import models, peft_modes
from mezo.scoring import generate, make_encoder
from mezo.tasks import get_task


def _position_module(model):
    inner = model.model.decoder if hasattr(model.model, "decoder") else model.model
    return inner.embed_positions if hasattr(inner, "embed_positions") else inner.rotary_emb


def _record(module):
    seen = []

    def hook(_, args, kwargs):
        pos = kwargs.get("position_ids")
        if pos is None:  # rotary_emb(x, position_ids)
            pos = args[1]
        seen.append(pos.tolist())
    return seen, module.register_forward_pre_hook(hook, with_kwargs=True)


@pytest.mark.parametrize("arch", ["opt", "llama"])
def test_prefix_tokens_take_no_positions(tmp_path, arch):
    path = build_model(str(tmp_path / arch), arch=arch)
    base, tok = models.load(path, None, "fp32", torch.device("cpu"))
    prefixed = peft_modes.apply_prefix(models.load(path, None, "fp32", torch.device("cpu"))[0], num_prefix=3)
    ids = torch.tensor([[0, 0, 5, 6, 7], [4, 5, 6, 7, 8]])
    mask = (torch.arange(5) >= torch.tensor([[2], [0]])).long()  # left padding on the first row
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    got = {}
    for name, m in (("base", base), ("prefix", prefixed)):
        seen, h = _record(_position_module(m.model if name == "prefix" else m))
        with torch.no_grad():
            m(input_ids=ids, attention_mask=mask, position_ids=None if name == "prefix" else pos)
        h.remove()
        got[name] = seen
    assert got["prefix"] == got["base"] == [pos.tolist()]

    task = get_task("SQuAD", family="causal")
    rows = [{"context": "It was great.", "question": "How was it?", "answers": {"text": ["great"]}, "id": "a",
             "title": "t"}]
    enc = make_encoder(tok, base, 256, "causal", max_new_tokens=4)
    samples = [task.sample(r) for r in rows]
    gen = {}
    for name, m in (("base", base), ("prefix", prefixed)):
        seen, h = _record(_position_module(m.model if name == "prefix" else m))
        generate(m, enc, samples, max_new_tokens=4)
        h.remove()
        gen[name] = seen
    assert len(gen["base"]) >= 2 and gen["prefix"][:len(gen["base"])] == gen["base"]

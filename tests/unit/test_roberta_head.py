"""RoBERTa-large details as the reference's medium models (issue 13, item 4), on a tiny RoBERTa:
the MLM decoder untied from the input embeddings unless --tie_emb (mezo.models.untie_mlm_decoder),
LoRA keeping the MLM head trainable (mezo.peft_modes.apply_lora), weight decay on every parameter
for MeZO (mezo.models.decays). Each test fails on the behaviour before: a tied decoder, adapters
only, no decay on biases and norms."""
import os

import pytest
import torch

from helpers import build_roberta

from mezo import models, peft_modes
from mezo.config import PeftConfig
from mezo.zo import ZOEngine

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def roberta(tmp_path_factory):
    return build_roberta(str(tmp_path_factory.mktemp("tiny_roberta_head")))


def _lora() -> PeftConfig:
    return PeftConfig(use_lora=True, lora_r=2, lora_alpha=4, lora_dropout=0.0, lora_target_modules=None,
                      prefix_tuning=False, num_prefix=5, prefix_init_by_real_act=True)


def test_decoder_is_an_untied_copy_unless_tie_emb(roberta, tmp_path):
    model, _ = models.load(roberta, None, "fp32", CPU, "mlm", tie_emb=False)
    emb, dec = model.roberta.embeddings.word_embeddings.weight, model.lm_head.decoder.weight
    assert dec is not emb and torch.equal(dec, emb)           # the checkpoint's values, its own tensor
    assert model.lm_head.decoder.bias is model.lm_head.bias   # the bias stays one parameter
    assert "lm_head.decoder.weight" in dict(model.named_parameters())
    with torch.no_grad():
        dec.add_(1.0)
    assert not torch.equal(dec, emb)                          # they train apart
    # saved and reloaded: both weights, untied, and the head bias restored (not initialised afresh)
    with torch.no_grad():
        model.lm_head.bias.add_(0.5)
    tok = models.load(roberta, None, "fp32", CPU, "mlm")[1]
    models.save_full(model, tok, str(tmp_path / "m"), True)
    again = models.load(str(tmp_path / "m"), None, "fp32", CPU, "mlm")[0]
    assert again.config.tie_word_embeddings is False
    assert torch.equal(again.lm_head.decoder.weight, dec) and torch.equal(again.roberta.embeddings.word_embeddings.weight, emb)
    assert torch.equal(again.lm_head.decoder.bias, model.lm_head.bias)

    tied, _ = models.load(roberta, None, "fp32", CPU, "mlm", tie_emb=True)
    assert tied.lm_head.decoder.weight is tied.roberta.embeddings.word_embeddings.weight


def test_mezo_decays_every_roberta_parameter(roberta):
    """medium_models/src/trainer.py (552cb1b): param - lr * (g * z + weight_decay * param) for every
    parameter it optimises, biases and LayerNorms included. With g = 0 only the decay acts."""
    model, _ = models.load(roberta, None, "fp32", CPU, "mlm", tie_emb=False)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    eng = ZOEngine.from_model(model, backend="eager", master_weights=True, decay=models.decays("mlm", "mezo"))
    assert all(s.decay for s in eng.slots)
    with torch.no_grad():
        eng.step(lambda: 0.0, [1], 0.5, 1e-3, 0.1)
        eng.flush()
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n] - 0.5 * (0.0 * before[n] + 0.1 * before[n])), n
    assert any("LayerNorm" in n for n in before) and any(n.endswith("bias") for n in before)


def test_decay_rules_per_family_and_trainer():
    names = ["roberta.embeddings.LayerNorm.weight", "lm_head.layer_norm.weight", "lm_head.bias",
             "roberta.encoder.layer.0.attention.self.query.weight", "model.decoder.layers.0.self_attn_layer_norm.weight",
             "model.norm.weight", "model.decoder.layers.0.fc1.bias", "lm_head.decoder.weight"]
    mezo_mlm, ft_mlm, causal = models.decays("mlm", "mezo"), models.decays("mlm", "ft"), models.decays("causal", "mezo")
    assert [mezo_mlm(n) for n in names] == [True] * len(names)
    # the medium models' Trainer groups: no decay on "bias" and "LayerNorm.weight" (lm_head.layer_norm decays)
    assert [ft_mlm(n) for n in names[:4]] == [False, True, False, True]
    assert [causal(n) for n in names] == [False, False, False, True, False, False, False, True]


def test_lora_keeps_the_mlm_head_trainable(roberta, tmp_path):
    """medium_models/run.py under --apply_lora freezes only the parameters named roberta.*: the
    adapters and the MLM head (dense, layer_norm, decoder, bias) train; saved with the adapters."""
    model, tok = models.load(roberta, None, "fp32", CPU, "mlm", tie_emb=False)
    inner = peft_modes.prepare(_lora(), "mezo", 0, model, tok)
    names = [n for n, _ in peft_modes.trainable(inner)]
    head = sorted(n.split(".modules_to_save.default.")[1] for n in names if ".modules_to_save." in n)
    assert head == ["bias", "decoder.weight", "dense.bias", "dense.weight", "layer_norm.bias", "layer_norm.weight"]
    assert all("lora_" in n or ".modules_to_save." in n for n in names)
    assert not any(n.startswith("roberta.") and "lora_" not in n for n in names)  # the encoder stays frozen
    with torch.no_grad():
        inner.lm_head.modules_to_save["default"].dense.weight.add_(1.0)
    peft_modes.save(_lora(), str(tmp_path / "a"), False, roberta, inner, tok, main=True)
    from peft import PeftModel
    fresh = models.load(roberta, None, "fp32", CPU, "mlm", tie_emb=False)[0]
    re = PeftModel.from_pretrained(fresh, str(tmp_path / "a")).get_base_model()
    assert torch.equal(re.lm_head.modules_to_save["default"].dense.weight,
                       inner.lm_head.modules_to_save["default"].dense.weight)
    # --tie_emb: the decoder is the frozen input embedding, so it stays frozen (the reference
    # freezes roberta.embeddings.word_embeddings.weight, which it then is)
    tied_model, tok = models.load(roberta, None, "fp32", CPU, "mlm", tie_emb=True)
    tied = [n for n, _ in peft_modes.trainable(peft_modes.prepare(_lora(), "mezo", 0, tied_model, tok))]
    assert not any(n.endswith("decoder.weight") for n in tied) and any(n.endswith("dense.weight") for n in tied)


def test_causal_lora_stays_adapters_only(tmp_path):
    """large_models/lora.py freezes every non-LoRA parameter: unchanged for the causal family."""
    from helpers import build_model
    path = build_model(str(tmp_path / "opt"), arch="opt")
    model, tok = models.load(path, None, "fp32", CPU, "causal")
    names = [n for n, _ in peft_modes.trainable(peft_modes.prepare(_lora(), "mezo", 0, model, tok))]
    assert names and all("lora_" in n for n in names)
    assert os.path.isdir(path)

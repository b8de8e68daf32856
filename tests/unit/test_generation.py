"""mezo.scoring.generate stops where the reference's generation stops (princeton-nlp/MeZO
large_models/run.py: model.generate(eos_token_id=[encode("\\n")[-1], eos]), then
decode(skip_special_tokens=True).strip()): on the newline token or EOS only, with no cut of
the text; a token that merely holds a newline ("\\n\\n") does not stop it."""
import torch

from mezo.scoring import Encoder, generate
from mezo.tasks import Sample


def _tokenizer():
    """A byte-level BPE that learns the double-newline token "\\n\\n" (as GPT-2 / Llama vocabularies have)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(["one\n\n", "two\n", "three"] * 20, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<pad>", "</s>", "<unk>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="</s>", pad_token="<pad>", unk_token="<unk>")


class Scripted(torch.nn.Module):
    """A causal LM whose greedy continuation is `script`, one token per call."""

    def __init__(self, script, vocab):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.script, self.vocab, self.calls = script, vocab, 0

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None, use_cache=None):
        logits = torch.zeros(input_ids.shape[0], input_ids.shape[1], self.vocab)
        logits[:, -1, self.script[min(self.calls, len(self.script) - 1)]] = 1.0
        self.calls += 1
        return type("Out", (), {"logits": logits, "past_key_values": None})()


def _ids(tok, text):
    ids = tok(text, add_special_tokens=False).input_ids
    assert len(ids) == 1, (text, ids)
    return ids[0]


def test_only_the_newline_token_or_eos_stops_generation():
    tok = _tokenizer()
    one, double, two, nl, three = (_ids(tok, t) for t in ("one", "\n\n", "two", "\n", "three"))
    enc = Encoder(tok, 64)
    s = Sample(prompt="five", candidates=[], answers=["one"])
    # "one" "\n\n" "two" "\n": the reference runs past "\n\n" and stops at "\n"
    assert generate(Scripted([one, double, two, nl, three], len(tok)), enc, [s], max_new_tokens=10) == ["one\n\ntwo"]
    # EOS stops too, and is not part of the text
    assert generate(Scripted([one, tok.eos_token_id, two], len(tok)), enc, [s], max_new_tokens=10) == ["one"]
    # neither: max_new_tokens
    assert generate(Scripted([three], len(tok)), enc, [s], max_new_tokens=3) == ["threethreethree"]

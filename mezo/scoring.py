"""Scoring for causal and masked LMs: the training losses and the evaluation all come from here.

Causal LMs. A sample's score for candidate c is the mean log-likelihood of c's tokens after the
prompt (the reference's option scoring). The "classification" loss is the cross-entropy over
those scores (the reference's --train_as_classification); the "lm" loss is the teacher-forced
token cross-entropy of the gold continuation only (the reference's default, only_train_option),
averaged over the gold tokens of the batch. Batches are left-padded so every sequence ends at
the same position and only the last few positions go through the LM head (`logits_to_keep`);
all candidates of a batch go through one forward. When every candidate is one token, the
candidates need no forward of their own: one forward of the prompts gives all of them.
Generation (SQuAD, DROP) is greedy decoding with a KV cache over a left-padded batch, stopping
at a newline (or EOS) after at most max_new_tokens.

Truncation as the reference's encode_prompt (large_models/utils.py): each prompt + continuation
sequence is cut on its own from the left to max_length, keeping a leading BOS
(`Encoded.prompt_for`); generation tasks lower max_length by max_new_tokens first (2048 - 50 =
1998), for the prompt and for prompt + gold alike. When nothing is cut, every candidate follows
the same whole prompt.

Masked LMs (RoBERTa, LM-BFF prompts). The score of a label word is its logit at the <mask>
position; the loss is the cross-entropy over the label-word logits, the prediction the argmax.
Only the mask positions go through the MLM head.

`example_losses` returns one loss per sample and the count it weighs in the mean (1 per sample,
or its gold tokens for "lm"), so that the loop can sum them in a fixed order whatever the
number of forwards and ranks (mezo.batches); `loss_terms` is their (sum, count). Given a
`Shape` (`forward_shape` of a whole global batch), a forward pads to that length and keeps
that many positions instead of its own, so its rows have the same shape on any world size.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mezo import distributed as D, metrics as M
from mezo.tasks import MASK, Sample


@dataclass(frozen=True)
class Shape:
    """A forward's padded length, the positions kept through the LM head and whether candidates
    are all single tokens (one forward of the prompts), fixed for a whole batch."""
    length: int
    keep: int = 1
    single: bool = True


@dataclass
class Encoded:
    prompt: list[int]          # causal: the prompt cut for its longest candidate (generation: for
                               # max_new_tokens); mlm: the whole input, <s> ... </s>
    cands: list[list[int]]     # candidate ids (mlm: one label-word id each)
    gold: list[int] | None     # teacher-forced gold continuation ids (causal "lm" loss), if any
    mask_pos: int | None = None  # mlm: index of the mask token in prompt
    full: list[int] | None = None  # causal: the whole prompt, before any cut
    limit: int = 0             # causal: the longest prompt + continuation
    keep_first: bool = True    # causal: a cut keeps the first (BOS) token

    def prompt_for(self, n: int) -> list[int]:
        """The prompt a continuation of n tokens follows, as the reference cuts each prompt +
        continuation sequence on its own (large_models/utils.py encode_prompt): from the left to
        `limit` tokens, keeping the first token when the tokenizer adds a BOS."""
        return left_cut(self.full if self.full is not None else self.prompt, self.limit - n, self.keep_first)


def left_cut(ids: list[int], budget: int, keep_first: bool) -> list[int]:
    """`ids` cut from the left to `budget` tokens (token 0 kept with keep_first): the prompt part
    of encode_prompt's `encoding[0:1] + encoding[1:][-(max_length - 1):]` when the continuation
    takes max_length - budget tokens."""
    if len(ids) <= budget:
        return ids
    if keep_first:
        return ids[:1] + (ids[len(ids) - budget + 1:] if budget > 1 else [])
    return ids[len(ids) - budget:] if budget > 0 else []


class Encoder:
    """Tokenises samples once: prompt ids and candidate ids (cached per Sample object).

    OPT: the reference (MeZO large_models/run.py) sets `tokenizer.bos_token_id = 0` for OPT
    ("HF tokenizer bug fix"), so its prompts start with id 0 ("<s>") where the Hugging Face OPT
    tokenizer puts id 2 ("</s>"). With model_type="opt" we replace a leading 2 by 0 to match.
    """

    def __init__(self, tokenizer, max_length: int = 2048, model_type: str | None = None, family: str = "causal",
                 max_new_tokens: int = 50):
        self.tok = tokenizer
        self.max_length = max_length
        self.family = family            # "causal" | "mlm"
        self.max_new_tokens = max_new_tokens
        self.first_token = 0 if model_type == "opt" else None
        # the reference keeps token 0 in a cut when the tokenizer adds a BOS (add_bos_token)
        self.keep_first = family != "mlm" and len(tokenizer("").input_ids) > 0
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
        self._cache: dict[int, tuple[Sample, Encoded]] = {}
        self._stop = None

    def encode(self, s: Sample) -> Encoded:
        key = id(s)
        hit = self._cache.get(key)
        if hit is not None and hit[0] is s:
            return hit[1]
        e = self._encode_mlm(s) if self.family == "mlm" else self._encode_causal(s)
        self._cache[key] = (s, e)   # the Sample is kept so its id is not reused while cached
        return e

    def __call__(self, s: Sample) -> tuple[list[int], list[list[int]]]:
        e = self.encode(s)
        return e.prompt, e.cands

    def _encode_causal(self, s: Sample) -> Encoded:
        prompt = self.tok(s.prompt).input_ids
        if self.first_token is not None and prompt and prompt[0] == self.tok.bos_token_id:
            prompt = [self.first_token] + prompt[1:]
        cands = [self.tok(c, add_special_tokens=False).input_ids for c in s.candidates]
        gold = None
        if s.target is not None or (s.label is not None and s.candidates):
            gold = self.tok(s.gold_text(), add_special_tokens=False).input_ids
        # generation tasks leave room for the answer: max_length - max_new_tokens (2048 - 50 = 1998
        # in the reference) for the prompt and for prompt + gold alike (encode_prompt)
        limit = self.max_length - (0 if s.candidates else self.max_new_tokens)
        e = Encoded(prompt, cands, gold, full=prompt, limit=limit, keep_first=self.keep_first)
        e.prompt = e.prompt_for(max((len(c) for c in cands), default=0))
        return e

    def _encode_mlm(self, s: Sample) -> Encoded:
        if s.parts is not None:  # LM-BFF: part by part, with its sentence and length limits
            ids = s.parts.ids(self.tok, self.max_length)
        else:  # a prompt without a recipe: the text with <mask>, cut from the head
            ids = self.tok(s.prompt.replace(MASK, self.tok.mask_token)).input_ids
            if len(ids) > self.max_length:
                ids = ids[:1] + ids[len(ids) - self.max_length + 1:]
        mask_id = self.tok.mask_token_id
        pos = ids.index(mask_id) if mask_id in ids else len(ids) - 2
        # LM-BFF's label word id: the first token of " " + word (single tokens for RoBERTa)
        cands = [self.tok(c, add_special_tokens=False).input_ids[:1] for c in s.candidates]
        return Encoded(ids, cands, None, pos)

    def stop_ids(self, vocab: int) -> torch.Tensor:
        """Bool [vocab]: where generation stops, as the reference's generate(eos_token_id=[the
        last token of encode("\n"), EOS]) (princeton-nlp/MeZO large_models/run.py): the newline
        token itself and EOS, not the other tokens that hold a newline (e.g. "\n\n")."""
        if self._stop is None or len(self._stop) != vocab:
            stop = torch.zeros(vocab, dtype=torch.bool)
            for i in (self.tok("\n", add_special_tokens=False).input_ids[-1:] + [self.tok.eos_token_id]):
                if i is not None and i < vocab:
                    stop[i] = True
            self._stop = stop
        return self._stop


def _accepts(model, name: str) -> bool:
    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def _pad(seqs: list[list[int]], pad_id: int, left: bool, length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) [B, T] of `seqs` padded on the left (causal LMs) or right (MLMs) to
    `length` (default: the longest)."""
    T = length or max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        span = slice(T - len(s), T) if left else slice(0, len(s))
        ids[i, span] = torch.tensor(s)
        mask[i, span] = 1
    return ids, mask


def _left_pad(seqs: list[list[int]], pad_id: int, length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    return _pad(seqs, pad_id, left=True, length=length)


def _right_pad(seqs: list[list[int]], pad_id: int, length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    return _pad(seqs, pad_id, left=False, length=length)


def causal_inputs(model, seqs: list[list[int]], pad_id: int, keep: int, length: int | None = None) -> dict:
    """Forward kwargs for `seqs` left-padded (to `length`): position ids that skip the padding,
    and only the last `keep` positions through the LM head where the model supports it."""
    device = next(model.parameters()).device
    ids, mask = _left_pad(seqs, pad_id, length)
    kwargs = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
    if _accepts(model, "position_ids"):
        kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0).to(device)
    if _accepts(model, "logits_to_keep"):
        kwargs["logits_to_keep"] = keep
    return kwargs


def forward_last(model, seqs: list[list[int]], pad_id: int, keep: int, length: int | None = None) -> torch.Tensor:
    """Log-probabilities [B, keep, V] at the last `keep` positions of left-padded `seqs`."""
    logits = model(**causal_inputs(model, seqs, pad_id, keep, length)).logits[:, -keep:].float()
    return F.log_softmax(logits, dim=-1)


def continuation_logprobs(model, enc: Encoder, pairs: list[tuple[list[int], list[int]]], shape: Shape | None = None):
    """Token log-likelihoods of each continuation c after its prompt p, all pairs in one forward:
    (logp [N, L], valid [N, L]) with continuation tokens right-aligned (L = longest, or shape.keep - 1)."""
    seqs = [p + c for p, c in pairs]
    lens = [len(c) for _, c in pairs]
    L = shape.keep - 1 if shape else max(lens)
    logp = forward_last(model, seqs, enc.pad_id, L + 1, shape.length if shape else None)[:, :-1]  # the last L tokens
    targets = torch.zeros((len(seqs), L), dtype=torch.long)
    valid = torch.zeros((len(seqs), L), dtype=torch.bool)
    for j, s in enumerate(seqs):
        targets[j, L - lens[j]:] = torch.tensor(s[-lens[j]:])
        valid[j, L - lens[j]:] = True
    targets, valid = targets.to(logp.device), valid.to(logp.device)
    return logp.gather(-1, targets[..., None])[..., 0] * valid, valid


def candidate_scores(model, enc: Encoder, samples: list[Sample], shape: Shape | None = None) -> list[torch.Tensor]:
    """Causal: mean log-likelihood of each candidate, one tensor [n_candidates] per sample."""
    encoded = [enc.encode(s) for s in samples]
    if shape.single if shape else all(len(c) == 1 for e in encoded for c in e.cands):  # all after the same prompt
        logp = forward_last(model, [e.prompt_for(1) for e in encoded], enc.pad_id, 1,
                            shape.length if shape else None)[:, 0]
        return [logp[i, [c[0] for c in e.cands]] for i, e in enumerate(encoded)]
    pairs = [(e.prompt_for(len(c)), c) for e in encoded for c in e.cands]
    tok_lp, valid = continuation_logprobs(model, enc, pairs, shape)
    mean_lp = tok_lp.sum(-1) / valid.sum(-1)
    out, j = [], 0
    for e in encoded:
        out.append(mean_lp[j: j + len(e.cands)])
        j += len(e.cands)
    return out


def scored_rows(enc: Encoder, s: Sample) -> list[int]:
    """The lengths of the rows `scores` runs for sample s: its prompt (mlm; causal with
    single-token candidates, all after one prompt), else prompt + candidate, one per candidate."""
    e = enc.encode(s)
    if enc.family == "mlm":
        return [len(e.prompt)]
    if all(len(c) == 1 for c in e.cands):
        return [len(e.prompt_for(1))]
    return [len(e.prompt_for(len(c))) + len(c) for c in e.cands]


def mask_logits(model, enc: Encoder, samples: list[Sample], shape: Shape | None = None) -> list[torch.Tensor]:
    """MLM: the label-word logits at the mask, one tensor [n_words] per sample (right-padded batch;
    only the mask positions go through the MLM head of a Hugging Face *ForMaskedLM)."""
    encoded = [enc.encode(s) for s in samples]
    device = next(model.parameters()).device
    ids, mask = _right_pad([e.prompt for e in encoded], enc.pad_id, shape.length if shape else None)
    ids, mask = ids.to(device), mask.to(device)
    rows = torch.arange(len(encoded), device=device)
    pos = torch.tensor([e.mask_pos for e in encoded], device=device)
    head = getattr(model, "lm_head", None) if "MaskedLM" in type(model).__name__ else None
    if head is not None:
        # the root's forward (so that FSDP2 gathers the root's parameters: embeddings, head), with
        # only the mask positions handed to the head
        hook = head.register_forward_pre_hook(lambda _m, args: (args[0][rows, pos], *args[1:]))
        try:
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
        finally:
            hook.remove()
    else:
        logits = model(input_ids=ids, attention_mask=mask).logits[rows, pos].float()
    return [logits[i, [c[0] for c in e.cands]] for i, e in enumerate(encoded)]


def scores(model, enc: Encoder, samples: list[Sample], shape: Shape | None = None) -> list[torch.Tensor]:
    """Per-sample candidate scores: mean log-likelihoods (causal) or label-word logits (mlm)."""
    return mask_logits(model, enc, samples, shape) if enc.family == "mlm" else candidate_scores(model, enc, samples, shape)


def classification_losses(model, enc: Encoder, samples: list[Sample], shape: Shape | None = None) -> torch.Tensor:
    """Per-sample cross-entropy over candidate scores, [len(samples)]."""
    out = scores(model, enc, samples, shape)
    return torch.stack([F.cross_entropy(s[None], torch.tensor([x.label], device=s.device)) for s, x in zip(out, samples)])


def classification_loss(model, enc: Encoder, samples: list[Sample]) -> torch.Tensor:
    """Summed cross-entropy over candidate scores (divide by len(samples) for the mean)."""
    return classification_losses(model, enc, samples).sum()


def lm_losses(model, enc: Encoder, samples: list[Sample], shape: Shape | None = None) -> tuple[torch.Tensor, list[int]]:
    """Per-sample (summed token NLL of the gold continuation, number of gold tokens): teacher
    forcing on the gold answer only, as the reference's LM-style training
    (--train_as_classification False). A sample without a gold continuation counts (0, 0)."""
    encoded = [enc.encode(s) for s in samples]
    have = [i for i, e in enumerate(encoded) if e.gold]
    counts = [loss_weight(enc, s, "lm") for s in samples]
    if not have:
        return torch.zeros(len(samples)), counts
    tok_lp, valid = continuation_logprobs(model, enc, [(encoded[i].prompt_for(len(encoded[i].gold)), encoded[i].gold)
                                                       for i in have], shape)
    nll = torch.zeros(len(samples), device=tok_lp.device, dtype=tok_lp.dtype)
    return nll.index_copy(0, torch.tensor(have, device=tok_lp.device), -tok_lp.sum(-1)), counts


def lm_loss_terms(model, enc: Encoder, samples: list[Sample]) -> tuple[torch.Tensor, int]:
    """(summed token NLL of the gold continuations, number of gold tokens)."""
    values, counts = lm_losses(model, enc, samples)
    return values.sum(), sum(counts)


def predict(model, enc: Encoder, samples: list[Sample], shape: Shape | None = None) -> list[int]:
    return [int(s.argmax()) for s in scores(model, enc, samples, shape)]


@torch.no_grad()
def generate(model, enc: Encoder, samples: list[Sample], max_new_tokens: int | None = None,
             sync=None, shape: Shape | None = None) -> list[str]:
    """Greedy decoding with a KV cache over a left-padded batch; each output stops at the newline
    token or EOS (Encoder.stop_ids) and is decoded without special tokens and stripped, as the
    reference's. `sync(done_count) -> total` keeps ranks in lockstep under FSDP."""
    max_new = enc.max_new_tokens if max_new_tokens is None else max_new_tokens
    device = next(model.parameters()).device
    ids, mask = _left_pad([enc(s)[0] for s in samples], enc.pad_id, shape.length if shape else None)
    ids, mask = ids.to(device), mask.to(device)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    # a prefix-tuned model (peft_modes.PrefixLM) prepends its prefix cache on the first call only
    inner, P = (model.model, model.num_prefix) if hasattr(model, "prefix_cache") else (model, 0)
    kw = {"logits_to_keep": 1} if _accepts(model, "logits_to_keep") else {}
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **kw)
    past = out.past_key_values
    B = len(samples)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    gen = []
    for t in range(max_new):
        logits = out.logits[:, -1].float()
        nxt = logits.argmax(-1)
        stop = enc.stop_ids(logits.shape[-1]).to(device)
        gen.append(torch.where(done, torch.full_like(nxt, -1), nxt))
        done = done | stop[nxt]
        finished = int(done.sum())
        if sync is not None:
            finished, B_all = sync(finished, B)
        else:
            B_all = B
        if finished >= B_all or t == max_new - 1:
            break
        mask = torch.cat([mask, torch.ones((B, 1), dtype=mask.dtype, device=device)], dim=1)
        pos = pos[:, -1:] + 1
        full_mask = torch.cat([torch.ones((B, P), dtype=mask.dtype, device=device), mask], 1) if P else mask
        out = inner(input_ids=nxt[:, None], attention_mask=full_mask, position_ids=pos, past_key_values=past,
                    use_cache=True)
        past = out.past_key_values
    toks = torch.stack(gen, 1).tolist() if gen else [[] for _ in samples]
    texts = []
    for row in toks:
        row = [t for t in row if t >= 0]
        texts.append(enc.tok.decode(row, skip_special_tokens=True).strip())
    return texts


def sample_metric(s: Sample, pred) -> dict[str, float]:
    """Per-sample metric values: {"accuracy"} for an index, {"f1", "em"} for generated text."""
    if isinstance(pred, str):
        return {"f1": M.f1(pred, s.answers), "em": M.exact_match(pred, s.answers)}
    return {"accuracy": float(pred in s.gold_ids)}


def loss_weight(enc: Encoder, s: Sample, loss: str) -> int:
    """The count a sample weighs in the mean loss: its gold tokens for "lm", else 1."""
    return len(enc.encode(s).gold or []) if loss == "lm" else 1


def example_losses(model, enc: Encoder, samples: list[Sample], loss: str,
                   shape: Shape | None = None) -> tuple[torch.Tensor, list[int]]:
    """The training loss of each of `samples`, [len(samples)], and the count each weighs in the
    mean: "classification": CE over candidate scores (or MLM label-word logits), count 1;
    "lm": summed teacher-forced NLL of the gold continuation, count = its gold tokens;
    "non_diff": minus the task metric (accuracy, or F1 of greedy generations), count 1.
    Each value depends only on the samples of this call (one forward), never on a reduction
    across calls: the caller decides the order of the sums. `shape`: pad to it (forward_shape)."""
    if loss == "classification":
        return classification_losses(model, enc, samples, shape), [1] * len(samples)
    if loss == "lm":
        return lm_losses(model, enc, samples, shape)
    if loss == "non_diff":
        sync = D.sync_counts if D.world_size() > 1 else None  # generation keeps FSDP2 ranks in lockstep
        preds = generate(model, enc, samples, sync=sync, shape=shape) if not samples[0].candidates \
            else predict(model, enc, samples, shape)
        vals = [-next(iter(sample_metric(s, p).values())) for s, p in zip(samples, preds)]
        return torch.tensor(vals, dtype=torch.float64), [1] * len(samples)
    raise ValueError(f"unknown loss {loss!r}")


def forward_shape(enc: Encoder, samples: list[Sample], loss: str) -> Shape:
    """The Shape that example_losses(..., loss) of any subset of `samples` would take at most:
    the longest padded row (each continuation after its own cut of the prompt, Encoded.prompt_for),
    the most positions kept, and whether one forward of the prompts scores every candidate."""
    e = [enc.encode(s) for s in samples]
    if enc.family == "mlm" or (loss == "non_diff" and not samples[0].candidates):  # mask logits, generation
        return Shape(max(len(x.prompt) for x in e))
    if loss == "lm":
        g = [x for x in e if x.gold] or e[:1]
        return Shape(max(len(x.prompt_for(len(x.gold or []))) + len(x.gold or []) for x in g),
                     max(len(x.gold or []) for x in g) + 1, False)
    if all(len(c) == 1 for x in e for c in x.cands):
        return Shape(max(len(x.prompt_for(1)) for x in e))
    pairs = [(x.prompt_for(len(c)), c) for x in e for c in x.cands]
    return Shape(max(len(p) + len(c) for p, c in pairs), max(len(c) for _, c in pairs) + 1, False)


def loss_terms(model, enc: Encoder, samples: list[Sample], loss: str) -> tuple[torch.Tensor, int]:
    """(sum, count) of the training loss over `samples` (see example_losses)."""
    values, counts = example_losses(model, enc, samples, loss)
    return values.sum(), sum(counts)


def context_length(model) -> int | None:
    """The longest input the model's position embeddings allow (RoBERTa: minus its padding offset;
    prefixes take no positions: peft_modes.PrefixLM numbers the real tokens from 0)."""
    cfg = getattr(model, "config", None)
    n = getattr(cfg, "max_position_embeddings", None)
    if n is None:
        return None
    if getattr(cfg, "model_type", None) in ("roberta", "xlm-roberta"):
        n -= (getattr(cfg, "pad_token_id", 1) or 1) + 1
    return n


def make_encoder(tok, model, max_length: int = 2048, family: str = "causal", max_new_tokens: int = 50) -> Encoder:
    """The run's Encoder: max_length capped at the model's context length; OPT's first token
    set to 0 as in the reference; masked-LM scoring for family "mlm"."""
    limit = context_length(model)
    max_length = min(max_length, limit) if limit else max_length
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return Encoder(tok, max_length, model_type=model_type, family=family, max_new_tokens=max_new_tokens)

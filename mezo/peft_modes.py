"""Parameter-efficient modes (the paper's MeZO-LoRA and MeZO-prefix, and their backprop
counterparts): what is trainable, how it is built before FSDP2 sharding, and how it is saved.

* LoRA (`--use_lora`): `peft.get_peft_model` injects the adapters; the base is frozen
  (requires_grad False) so the MeZO engine, which perturbs the parameters that require grad,
  only ever touches the adapters. The training loop works on the *inner* Hugging Face model
  (with the LoRA layers injected), so the scoring code's position_ids/logits_to_keep detection
  and FSDP2's block discovery see the usual model; the PeftModel wrapper is kept for saving
  (`adapter_config.json` + `adapter_model.safetensors`, loadable by `PeftModel.from_pretrained`).
  Paper setting: r=8, alpha=16 on the query and value projections (the defaults; the seed
  presets' r=16, alpha=32 are `--lora_r 16 --lora_alpha 32`); the target modules default to
  q_proj,v_proj (OPT, Llama-style) or query,value (RoBERTa). Masked LMs (RoBERTa) also keep
  the MLM head trainable, as the reference's medium models do (`apply_lora`, train_head).

* Prefix tuning (`--prefix_tuning`): `PrefixLM` wraps the model and owns one trainable key
  and one value tensor per layer ([kv_heads, num_prefix, head_dim], i.e. what the attention
  reads from its KV cache: post-RoPE keys for Llama). Each forward builds a `DynamicCache`
  pre-filled with the prefixes and prepends num_prefix ones to the attention mask. The prefixes
  take no positions: the real tokens are numbered as without them (causal LMs from 0; RoBERTa
  its own padding_idx + 1, ...), as in the reference (large_models/prefix.py and
  medium_models/src/prefix.py inject the keys/values inside the attention modules, so the
  decoder's position embeddings never see them). RoBERTa (masked LM, transformers 5.x): the
  encoder's self-attention also concatenates a passed cache in front of its keys/values and the
  bidirectional mask covers prefix + input, so the same cache works. The
  prefixes are parameters of the wrapper, which is the FSDP2 root, so they are all-gathered by
  the root's pre-forward like the embeddings.
  `--prefix_init_by_real_act` (default, the reference's prefix.py) initialises them with the
  keys/values of num_prefix random vocabulary tokens run through the model;
  `--prefix_random_init` draws them from N(0, 1). Saved to prefix_model.safetensors +
  prefix_config.json; `load_prefix(base_model, folder)` rebuilds the PrefixLM.
"""
from __future__ import annotations

import inspect
import json
import os

import torch
from torch import nn

from mezo.errors import BadInput

LORA_DEFAULT_TARGETS = "q_proj,v_proj"      # OPT, Llama-style
LORA_ROBERTA_TARGETS = "query,value"      # RoBERTa / BERT attention
HEAD = "lm_head"                          # the MLM head (masked LMs keep it trainable under LoRA)
PREFIX_WEIGHTS = "prefix_model.safetensors"
PREFIX_CONFIG = "prefix_config.json"
MODES = ("mezo", "mezo_lora", "mezo_prefix", "ft", "ft_lora", "ft_prefix", "linear_probe")


# ---------------------------------------------------------------------------------- LoRA
def lora_targets(model: nn.Module, targets=None) -> list[str]:
    """The module names to adapt: `targets` (comma-separated or a list), else the paper's q/v
    projections under their name in this architecture."""
    if targets:
        chosen = [t.strip() for t in targets.split(",") if t.strip()] if isinstance(targets, str) else list(targets)
        check_targets(model, chosen)
        return chosen
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    for default in (LORA_DEFAULT_TARGETS, LORA_ROBERTA_TARGETS):
        if set(default.split(",")) <= names:
            return default.split(",")
    raise ValueError("--lora_target_modules: no q_proj/v_proj or query/value modules in this model; name them")


def check_targets(model: nn.Module, targets: list[str]) -> None:
    """BadInput when a --lora_target_modules name matches no module (peft matches a name against
    the end of the module paths, and ignores a name that matches nothing as long as another
    does), listing the names of the model's linear layers that could be meant."""
    paths = [n for n, _ in model.named_modules()]
    lost = [t for t in targets if not any(n == t or n.endswith("." + t) for n in paths)]
    if not lost:
        return
    import difflib
    linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                     if isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D"})
    close = difflib.get_close_matches(lost[0], linear, n=len(linear), cutoff=0.0)[:8]
    raise BadInput(f"--lora_target_modules {lost[0]!r} matches no module of this {type(model).__name__}; "
                   f"its linear layers: {', '.join(close)}")


def is_masked_lm(model: nn.Module) -> bool:
    return "MaskedLM" in type(model).__name__


def apply_lora(model: nn.Module, r: int = 8, alpha: float = 16, targets=None,
               dropout: float = 0.0, seed: int = 0, train_head: bool = False) -> nn.Module:
    """Inject LoRA adapters (before sharding) and freeze the base. Returns the inner model (the
    original module with LoRA layers), the PeftModel being reachable through `peft_model_of`.
    The adapters take the base's dtype (autocast_adapter_dtype=False): FSDP2 all-gathers a
    block's parameters as one buffer, and the ZO engine keeps fp32 masters for bf16 anyway.

    train_head (masked LMs, as the reference's medium models under --apply_lora, which freeze
    only the parameters named roberta.*): the MLM head `lm_head` stays trainable besides the
    adapters, through peft's modules_to_save (a trainable copy, saved with the adapters and
    restored by PeftModel.from_pretrained). A decoder tied to the frozen input embeddings
    (--tie_emb) stays frozen, as there."""
    from peft import LoraConfig, get_peft_model
    tied_decoder = train_head and model.get_output_embeddings() is not None and \
        model.get_output_embeddings().weight is model.get_input_embeddings().weight
    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=lora_targets(model, targets),
                     bias="none", task_type=None if is_masked_lm(model) else "CAUSAL_LM",
                     modules_to_save=[HEAD] if train_head else None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # identical adapter init on every rank
        peft_model = get_peft_model(model, cfg, autocast_adapter_dtype=False)
    inner = peft_model.get_base_model()
    for n, p in inner.named_parameters():
        head = train_head and ".modules_to_save." in n and not (tied_decoder and n.endswith("decoder.weight"))
        p.requires_grad_("lora_" in n or head)
    object.__setattr__(inner, "_mezo_peft_model", peft_model)  # not a submodule: no cycle
    return inner


def peft_model_of(model: nn.Module):
    return model.__dict__.get("_mezo_peft_model")


# ---------------------------------------------------------------------------------- prefix
def _cache_layers(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return [(k, v) for k, v in cache]  # legacy tuples


class PrefixLM(nn.Module):
    """A causal or masked LM with trainable per-layer key/value prefixes (see the module docstring)."""

    def __init__(self, model: nn.Module, keys: list[torch.Tensor], values: list[torch.Tensor]):
        super().__init__()
        self.model = model
        self.num_prefix = int(keys[0].shape[-2])
        self.masked_lm = is_masked_lm(model)
        self.prefix_keys = nn.ParameterList([nn.Parameter(k.detach().clone()) for k in keys])
        self.prefix_values = nn.ParameterList([nn.Parameter(v.detach().clone()) for v in values])
        self.config = model.config
        self._no_split_modules = getattr(model, "_no_split_modules", None)  # FSDP2 block discovery
        self._inner_accepts_keep = "logits_to_keep" in inspect.signature(model.forward).parameters

    def prefix_cache(self, batch: int):
        from transformers import DynamicCache
        cache = DynamicCache(config=self.model.config)
        for i, (k, v) in enumerate(zip(self.prefix_keys, self.prefix_values)):
            cache.update(k[None].expand(batch, -1, -1, -1), v[None].expand(batch, -1, -1, -1), i)
        return cache

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, logits_to_keep=0, **kwargs):
        B, T = input_ids.shape
        P = self.num_prefix
        dev = input_ids.device
        if attention_mask is None:
            attention_mask = torch.ones((B, T), dtype=torch.long, device=dev)
        mask = torch.cat([torch.ones((B, P), dtype=attention_mask.dtype, device=dev), attention_mask], dim=1)
        kwargs.pop("use_cache", None)
        if self.masked_lm:  # RoBERTa's own positions (padding_idx + 1, ...), not shifted by the prefix
            if position_ids is None:
                pad = self.config.pad_token_id if self.config.pad_token_id is not None else 1
                real = input_ids.ne(pad).long()
                position_ids = real.cumsum(-1) * real + pad
            return self.model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids,
                              past_key_values=self.prefix_cache(B), **kwargs)
        # positions as without the prefix (0 for the first real token), as the reference's prefix
        # (princeton-nlp/MeZO large_models/prefix.py injects the keys/values inside attention, so
        # the decoder's positions never see them); only the attention mask is extended
        if position_ids is None:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        if self._inner_accepts_keep:
            kwargs["logits_to_keep"] = logits_to_keep
        return self.model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids,
                          past_key_values=self.prefix_cache(B), use_cache=True, **kwargs)


@torch.no_grad()
def prefix_init(model: nn.Module, num_prefix: int, vocab_size: int, by_real_act: bool = True, seed: int = 0):
    """Per-layer (keys, values), each [kv_heads, num_prefix, head_dim]: the keys/values of
    num_prefix random vocabulary tokens (the reference's init_by_real_act), or N(0, 1).
    The keys/values are read from a DynamicCache handed to the forward, which causal LMs and
    the RoBERTa encoder both fill."""
    from transformers import DynamicCache
    g = torch.Generator().manual_seed(seed)
    dev = next(model.parameters()).device
    ids = torch.randint(0, vocab_size, (1, num_prefix), generator=g).to(dev)
    cache = DynamicCache(config=model.config)
    kw = {} if is_masked_lm(model) else {"use_cache": True}
    model(input_ids=ids, attention_mask=torch.ones_like(ids), past_key_values=cache, **kw)
    layers = _cache_layers(cache)
    if len(layers) != model.config.num_hidden_layers or layers[0][0].shape[-2] != num_prefix:
        raise ValueError(f"prefix tuning: {type(model).__name__} did not fill the key/value cache")
    keys = [k[0].detach().clone() for k, _ in layers]
    values = [v[0].detach().clone() for _, v in layers]
    if not by_real_act:
        keys = [torch.randn(k.shape, generator=g).to(k) for k in keys]
        values = [torch.randn(v.shape, generator=g).to(v) for v in values]
    return keys, values


def apply_prefix(model: nn.Module, num_prefix: int = 5, vocab_size: int | None = None, by_real_act: bool = True,
                 seed: int = 0) -> PrefixLM:
    """Wrap `model` (before sharding) with trainable prefixes; the base is frozen."""
    vocab_size = vocab_size or model.config.vocab_size
    keys, values = prefix_init(model, num_prefix, vocab_size, by_real_act, seed)
    model.requires_grad_(False)
    return PrefixLM(model, keys, values)


def load_prefix(model: nn.Module, path: str) -> PrefixLM:
    """Wrap a (fresh) base model with the prefixes saved in `path` by `save_prefix`."""
    from safetensors.torch import load_file
    with open(os.path.join(path, PREFIX_CONFIG)) as f:
        cfg = json.load(f)
    sd = load_file(os.path.join(path, PREFIX_WEIGHTS))
    n = cfg["num_layers"]
    dtype = next(model.parameters()).dtype
    keys = [sd[f"prefix_keys.{i}"].to(dtype) for i in range(n)]
    values = [sd[f"prefix_values.{i}"].to(dtype) for i in range(n)]
    model.requires_grad_(False)
    return PrefixLM(model, keys, values).to(next(model.parameters()).device)


# ---------------------------------------------------------------------------------- set-up and saving
def prepare(peft, trainer: str, seed: int, model: nn.Module, tokenizer=None) -> nn.Module:
    """Apply the mode's adapters (a mezo.config.PeftConfig) to a freshly loaded (unsharded) model.
    Returns the module the loop trains and evaluates; its parameters that require grad are
    exactly the trainable ones (none for the linear probe: the model is a frozen feature extractor)."""
    if peft.use_lora:
        return apply_lora(model, peft.lora_r, peft.lora_alpha, peft.lora_target_modules, peft.lora_dropout, seed=seed,
                          train_head=is_masked_lm(model))
    if peft.prefix_tuning:
        vocab = min(len(tokenizer), model.config.vocab_size) if tokenizer is not None else None
        return apply_prefix(model, peft.num_prefix, vocab, peft.prefix_init_by_real_act, seed=seed)
    if trainer == "linear_probe":
        model.requires_grad_(False)
    return model


def trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def full_tensors(named) -> dict[str, torch.Tensor]:
    """{name: full CPU tensor}; under FSDP2 every rank must call this (it all-gathers)."""
    out = {}
    for n, p in named:
        t = p.detach()
        if hasattr(t, "full_tensor"):
            t = t.full_tensor()
        out[n] = t.cpu().clone().contiguous()
    return out


def save_lora(model: nn.Module, out_dir: str, main: bool) -> None:
    """The adapters (and a trained head copy, modules_to_save) as peft's save_pretrained writes them."""
    peft_model = peft_model_of(model)
    # with aliases: the head's decoder bias is its bias, and peft saves it under both names
    sd = full_tensors((n, p) for n, p in peft_model.named_parameters(remove_duplicate=False)
                      if "lora_" in n or ".modules_to_save." in n)
    if main:
        peft_model.save_pretrained(out_dir, state_dict=sd, safe_serialization=True)


def save_prefix(model: PrefixLM, out_dir: str, main: bool, base_model: str | None = None) -> None:
    from safetensors.torch import save_file
    sd = full_tensors((n, p) for n, p in model.named_parameters() if n.startswith("prefix_"))
    if main:
        os.makedirs(out_dir, exist_ok=True)
        save_file(sd, os.path.join(out_dir, PREFIX_WEIGHTS))
        with open(os.path.join(out_dir, PREFIX_CONFIG), "w") as f:
            json.dump({"num_prefix": model.num_prefix, "num_layers": len(model.prefix_keys),
                       "base_model": base_model, "loader": "mezo.peft_modes.load_prefix"}, f, indent=2)


def save(peft, out_dir: str, save_model: bool, base_model: str, model: nn.Module, tokenizer, main: bool) -> None:
    """LoRA: adapter files in out_dir; prefix: prefix files in out_dir (always, they are small);
    full fine-tuning: with save_model (--save_model), the full model in <out_dir>/model."""
    from mezo import models
    if peft.use_lora:
        save_lora(model, out_dir, main)
    elif peft.prefix_tuning:
        save_prefix(model, out_dir, main, base_model)
    elif save_model:
        models.save_full(model, tokenizer, os.path.join(out_dir, "model"), main)

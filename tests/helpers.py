"""Tiny real models for tests: a byte-level BPE tokenizer trained on the bundled SST-2 sample and
a small random-weight model built from a config, both saved with save_pretrained so the real
from_pretrained path is exercised. Nothing is downloaded."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "mezo", "data", "sst2_sample")
SHARED_DATA = os.environ.get("MEZO_DATA_DIR", os.path.join(os.path.dirname(ROOT), "shared", "data"))


def build_tokenizer(out_dir: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    texts = [json.loads(l)["sentence"] for l in open(os.path.join(SAMPLE, "glue/sst2/train.jsonl"))]
    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(texts + ["It was great", "It was terrible"], trainers.BpeTrainer(
        vocab_size=512, special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    from tokenizers.processors import TemplateProcessing
    tk.post_processor = TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 1)])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                  unk_token="<unk>")
    tok.save_pretrained(out_dir)
    return tok


def build_model(out_dir: str, arch: str = "llama", hidden: int = 32, layers: int = 2, seed: int = 0):
    """Save a tiny random model (+ tokenizer) to out_dir and return out_dir."""
    from transformers import AutoModelForCausalLM, LlamaConfig, OPTConfig
    tok = build_tokenizer(out_dir)
    torch.manual_seed(seed)
    if arch == "llama":
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                          num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                          max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                          tie_word_embeddings=True)
    else:
        cfg = OPTConfig(vocab_size=len(tok), hidden_size=hidden, ffn_dim=2 * hidden, num_hidden_layers=layers,
                        num_attention_heads=4, max_position_embeddings=256, word_embed_proj_dim=hidden,
                        bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(out_dir)
    return out_dir


def run_script(args: list[str], nproc: int = 1, timeout: int = 600, env=None) -> subprocess.CompletedProcess:
    """Run accelerate_mezo.py with python (nproc=1) or torchrun (nproc>1)."""
    script = os.path.join(ROOT, "accelerate_mezo.py")
    if nproc == 1:
        cmd = [sys.executable, script, *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_port", str(29500 + os.getpid() % 1000), script, *args]
    e = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=e)

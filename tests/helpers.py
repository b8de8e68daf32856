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
    e = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=e)


TEST_DATA = os.environ.get("MEZO_DATA_DIR", os.path.join(ROOT, "tests", "data"))  # a few real rows per task
MLM_WORDS = ["terrible", "great", "bad", "okay", "good", "Expression", "Entity", "Description", "Human", "Location",
             "Number", "Yes", "Maybe", "No"]


def build_roberta(out_dir: str, hidden: int = 32, layers: int = 2, seed: int = 0, max_positions: int = 130):
    """A tiny random RoBERTa masked LM (+ byte-level BPE tokenizer with <mask>; every LM-BFF label
    word " word" is one token) saved with save_pretrained; context max_positions - 2 tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoModelForMaskedLM, PreTrainedTokenizerFast, RobertaConfig
    texts = [json.loads(l)["sentence"] for l in open(os.path.join(SAMPLE, "glue/sst2/train.jsonl"))]
    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(texts + [" ".join(" " + w for w in MLM_WORDS)] * 200, trainers.BpeTrainer(
        vocab_size=700, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tk.post_processor = TemplateProcessing(single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
                                           special_tokens=[("<s>", 0), ("</s>", 2)])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                  unk_token="<unk>", mask_token="<mask>", cls_token="<s>", sep_token="</s>")
    tok.save_pretrained(out_dir)
    torch.manual_seed(seed)
    cfg = RobertaConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                        intermediate_size=2 * hidden, max_position_embeddings=max_positions, type_vocab_size=1,
                        pad_token_id=1, bos_token_id=0, eos_token_id=2)
    AutoModelForMaskedLM.from_config(cfg).save_pretrained(out_dir)
    return out_dir

"""The cache of converted GGUF models (mezo.models.gguf_cache): what keys it, when it is used,
and that a killed writer's leftovers do not survive the next write. (That a cached conversion
loads to the same tensors and token ids as the GGUF file: tests/e2e/test_script.py.)"""
import os

import pytest

from helpers import build_model
from mezo import models


@pytest.fixture
def gguf(tmp_path, monkeypatch):
    """A local file in a GGUF model's place (the key reads only its bytes) and a private cache."""
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "cache"))
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "x.gguf").write_bytes(b"GGUF" + bytes(range(256)) * 64)
    return str(tmp_path / "m"), "x.gguf"


def test_key_follows_the_file_dtype_and_family(gguf, tmp_path, monkeypatch):
    path, name = gguf
    a = models.gguf_cache(path, name, "fp32")
    assert a.startswith(str(tmp_path / "cache" / "gguf" / "x-fp32-"))
    assert models.gguf_cache(path, name, "fp32") == a
    assert models.gguf_cache(path, name, "bf16") != a
    assert models.gguf_cache(path, name, "fp32", "mlm") != a
    with open(os.path.join(path, name), "ab") as f:  # new content, new size: a new conversion
        f.write(b"!")
    assert models.gguf_cache(path, name, "fp32") != a
    monkeypatch.setenv(models.CACHE_ENV, "off")
    assert models.gguf_cache(path, name, "fp32") is None
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "cache"))
    assert models.gguf_cache(path, "missing.gguf", "fp32") is None
    assert models.gguf_cache(path, None, "fp32") is None


def test_written_folder_is_used_and_a_killed_writers_temp_folder_is_removed(gguf, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    folder = models.gguf_cache(*gguf, "fp32")
    os.makedirs(folder)  # a folder without the completion marker is never used
    assert not models._cached(folder)
    os.rmdir(folder)
    dead = folder + ".tmp-99999999"  # no such process: a killed writer's
    live = folder + f".tmp-{os.getppid()}"  # a running process may still be writing it
    os.makedirs(dead)
    os.makedirs(live)
    src = build_model(str(tmp_path / "tiny"))
    model = AutoModelForCausalLM.from_pretrained(src)
    models._write_cache(folder, model, AutoTokenizer.from_pretrained(src), "tiny")
    assert models._cached(folder)
    assert sorted(os.listdir(os.path.dirname(folder))) == sorted([os.path.basename(folder), os.path.basename(live)])
    again = AutoModelForCausalLM.from_pretrained(folder)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())

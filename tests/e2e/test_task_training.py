"""Every paper task wired into training and evaluation, on real rows (tests/data) with tiny random
models: render, score, evaluate, one MeZO step; generation; masked-LM scoring; baselines
(--zero_shot, --icl); --paper_hparams; flag validation. CPU, no network."""
from __future__ import annotations

import json
import math
import os

import pytest
import torch
import torch.nn.functional as F

from helpers import TEST_DATA, build_model, build_roberta, run_script
from mezo import config, train
from mezo.evaluation import evaluate, evaluate_with_loss, hf_eval_loss
from mezo.scoring import (Encoder, candidate_scores, example_losses, generate, loss_terms, make_encoder, mask_logits)
from mezo.tasks import get_task, make_splits
from mezo.tasks.icl import TRAIN_SEP

CAUSAL = ["SST2", "RTE", "CB", "BoolQ", "WSC", "WiC", "MultiRC", "Copa", "ReCoRD", "SQuAD", "DROP"]
MLM = ["SST-2", "SST-5", "TREC", "MNLI", "SNLI", "RTE"]
FAST = ["--zo_backend", "eager", "--num_dev", "4", "--num_eval", "6", "--num_train", "8", "--batch_size", "4",
        "--eval_batch_size", "4", "--max_steps", "1", "--eval_steps", "1", "--data_dir", TEST_DATA]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_model(str(tmp_path_factory.mktemp("tiny_llama")))


@pytest.fixture(scope="module")
def tiny_opt(tmp_path_factory):
    return build_model(str(tmp_path_factory.mktemp("tiny_opt")), arch="opt")


@pytest.fixture(scope="module")
def tiny_roberta(tmp_path_factory):
    return build_roberta(str(tmp_path_factory.mktemp("tiny_roberta")))


@pytest.fixture(scope="module")
def loaded(tiny):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    return AutoModelForCausalLM.from_pretrained(tiny).eval(), AutoTokenizer.from_pretrained(tiny)


@pytest.fixture(autouse=True)
def _grad_mode():
    yield
    torch.set_grad_enabled(True)  # mezo.train.run turns autograd off process-wide


def _splits(name, family="causal", n_train=8, n_eval=6):
    task = get_task(name, family=family)
    tr = task.load_split(task.train_split, TEST_DATA)
    ev = task.load_split(task.eval_split, TEST_DATA)
    return task, make_splits(task, tr, ev, num_train=n_train, num_dev=2, num_eval=n_eval)


def _run(argv):
    args = config.parse(argv)
    return args, train.run(args)


# ----------------------------------------------------------------------------- causal tasks
@pytest.mark.parametrize("name", CAUSAL)
def test_causal_task_renders_scores_evaluates_and_takes_a_mezo_step(name, loaded, tiny, tmp_path):
    model, tok = loaded
    task, sp = _splits(name)
    enc = Encoder(tok, 256)
    with torch.no_grad():
        # render: every sample has a prompt and either candidates with a gold index, or gold answers
        for s in sp.train + sp.test:
            assert s.prompt
            if task.kind == "generation":
                assert s.candidates == [] and s.answers and s.target.endswith("\n")
            else:
                assert len(s.candidates) >= 2 and all(0 <= g < len(s.candidates) for g in s.gold_ids)
        # score: one finite mean log-likelihood per candidate
        if task.kind != "generation":
            for sc, s in zip(candidate_scores(model, enc, sp.test), sp.test):
                assert sc.shape == (len(s.candidates),) and torch.isfinite(sc).all() and (sc <= 0).all()
        # the task's training loss on a batch: finite, positive, counted per sample / gold token
        loss, count = loss_terms(model, enc, sp.train[:4], task.train_loss)
        assert math.isfinite(float(loss)) and float(loss) > 0 and count >= 4
        # evaluate: the task's metrics (headline first), each in [0, 1]
        m = evaluate(model, enc, sp.test, 4)
        assert list(m) == (["f1", "em"] if task.kind == "generation" else ["accuracy"])
        assert all(0 <= v <= 1 for v in m.values())
        # the dev loss: the task's training loss of each sample (one forward each at batch 1, as
        # example_losses alone: the same bits), reduced as the reference's Trainer reduces eval_loss
        m1, loss = evaluate_with_loss(model, enc, sp.test, 1, task.train_loss)
        each = [example_losses(model, enc, [s], task.train_loss) for s in sp.test]
        assert m1 == evaluate(model, enc, sp.test, 1)
        assert loss == hf_eval_loss([float(v[0]) for v, _ in each], [c[0] for _, c in each]) and loss > 0
    # one MeZO step through the loop (in-process)
    args, res = _run(["--model_name", tiny, "--task_name", name, "--output_dir", str(tmp_path), "--learning_rate",
                      "1e-3", *FAST])
    (step,) = res["steps"]
    assert math.isfinite(step["loss_plus"]) and math.isfinite(step["loss_minus"])
    assert step["loss_plus"] != step["loss_minus"]  # the perturbation reached the loss
    assert step["projected_grad"] == (step["loss_plus"] - step["loss_minus"]) / (2 * 1e-3)  # the engine's formula
    assert list(res["final"]["test"]) == list(m)
    (ev,) = res["evals"]
    assert math.isfinite(ev["dev_loss"]) and res["final"]["selected"]["criterion"] == "dev_loss"  # causal: auto
    saved = json.load(open(tmp_path / "training_metrics.json"))
    assert saved["status"] == "completed" and saved["final"]["test"] == res["final"]["test"]


def test_batched_candidate_scores_match_one_forward_per_candidate(loaded):
    """The batched, left-padded, logits_to_keep scorer = the reference's batch-1 full-logits scoring
    (each prompt + candidate sequence cut on its own to max_length, mezo.scoring.Encoded.prompt_for)."""
    model, tok = loaded
    enc = Encoder(tok, 256)
    for name in ("Copa", "RTE", "ReCoRD"):
        _, sp = _splits(name, n_eval=4)
        with torch.no_grad():
            batched = candidate_scores(model, enc, sp.test)
            for s, sc in zip(sp.test, batched):
                e = enc.encode(s)
                ref = []
                for c in e.cands:
                    ids = torch.tensor([e.prompt_for(len(c)) + c])
                    lp = F.log_softmax(model(input_ids=ids).logits.float(), -1)[0, :-1]
                    ref.append(lp.gather(-1, ids[0, 1:, None])[:, 0][-len(c):].mean())
                # a padded batch runs GEMMs of other shapes than one sequence alone, so its sums
                # round differently: torch.testing's float32 defaults (rtol 1.3e-6, atol 1e-5)
                torch.testing.assert_close(sc, torch.stack(ref))


@pytest.mark.parametrize("overhead", [32, 0])   # 0: a forward per distinct length
def test_evaluation_forwards_cut_by_length_score_as_one_forward_per_candidate(loaded, overhead, monkeypatch):
    """On one CPU process evaluation cuts a length-sorted batch into forwards of near-equal rows
    (mezo.evaluation.split_for_padding); the scores are still the batch-1 reference's."""
    from mezo import evaluation
    from mezo.evaluation import _batch_scores, split_for_padding
    monkeypatch.setattr(evaluation, "CPU_FORWARD_OVERHEAD_TOKENS", overhead)
    # 16 RTE prompt lengths of the real data: one forward pads 59%, the cut 7%
    lens = [213, 198, 152, 132, 86, 84, 66, 64, 58, 57, 55, 51, 50, 46, 37, 35]
    assert split_for_padding([[x] for x in lens]) == [0, 2, 4, 6, 11]
    assert split_for_padding([[20]] * 8) == [0]                       # equal rows: one forward
    assert split_for_padding([[10, 12], [9, 9], [3, 4]], overhead=0) == [0, 1, 2]
    model, tok = loaded
    enc = Encoder(tok, 256)
    for name in ("Copa", "RTE", "ReCoRD"):
        _, sp = _splits(name, n_eval=6)
        run = sorted(sp.test, key=lambda s: -len(enc(s)[0]))
        with torch.no_grad():
            for s, sc in zip(run, _batch_scores(model, enc, run)):
                ref = candidate_scores(model, enc, [s])[0]
                # other GEMM shapes, other rounding: torch.testing's float32 defaults
                torch.testing.assert_close(sc, ref)


def test_lm_loss_is_teacher_forced_on_the_gold_tokens_only(loaded):
    model, tok = loaded
    enc = Encoder(tok, 256)
    _, sp = _splits("SQuAD", n_eval=2)
    s = sp.train[0]
    e = enc.encode(s)
    assert tok.decode(e.gold) == s.target  # " answer\n"
    with torch.no_grad():
        total, count = loss_terms(model, enc, [s], "lm")
        prompt = e.prompt_for(len(e.gold))  # prompt + gold cut as one sequence
        ids = torch.tensor([prompt + e.gold])
        labels = torch.tensor([[-100] * len(prompt) + e.gold])
        hf = model(input_ids=ids, labels=labels).loss  # mean over the gold tokens
    assert count == len(e.gold)
    # HF's loss reads every position's logits, ours the last few (logits_to_keep): other GEMM
    # shapes, other rounding; torch.testing's float32 rtol
    assert float(total) / count == pytest.approx(float(hf), rel=1.3e-6)


def test_non_diff_trains_on_minus_accuracy(tiny, tmp_path):
    _, res = _run(["--model_name", tiny, "--task_name", "SST2", "--output_dir", str(tmp_path), "--non_diff", *FAST])
    s = res["steps"][0]
    for v in (s["loss_plus"], s["loss_minus"]):  # minus the batch accuracy: a multiple of 1/4 in [-1, 0]
        assert -1 <= v <= 0 and (v * 4) == int(v * 4)


# ----------------------------------------------------------------------------- generation
class NewlineAfter(torch.nn.Module):
    """Wraps a causal LM: from the k-th generated token on, the newline token wins."""

    def __init__(self, model, newline_id, prompt_len, k):
        super().__init__()
        self.model, self.nl, self.T0, self.k = model, newline_id, prompt_len, k
        self.calls = []

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None, use_cache=None,
                **kw):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=past_key_values, use_cache=use_cache)
        self.calls.append(int(input_ids.shape[1]))
        if attention_mask.shape[1] - self.T0 >= self.k:
            out.logits[:, -1, self.nl] = 1e4
        return out


def test_greedy_generation_uses_the_cache_stops_at_newline_and_matches_no_cache(loaded):
    model, tok = loaded
    enc = Encoder(tok, 2048)
    _, sp = _splits("DROP", n_eval=3)
    batch = sp.test[:3]
    assert len({len(enc(s)[0]) for s in batch}) > 1  # different lengths: left padding is exercised
    T0 = max(len(enc(s)[0]) for s in batch)
    nl = tok("\n", add_special_tokens=False).input_ids[-1]
    wrapped = NewlineAfter(model, nl, T0, k=3)
    with torch.no_grad():
        texts = generate(wrapped, enc, batch, max_new_tokens=50)
        # full prompt once, then one token per step with the cache; stopped at the newline (step 4), not 50
        assert wrapped.calls[0] == T0 and wrapped.calls[1:] == [1, 1, 1]
        assert all("\n" not in t for t in texts)
        # the same greedy tokens without a cache, one sample at a time (no padding)
        for s, text in zip(batch, texts):
            ids = list(enc(s)[0])
            for _ in range(3):
                ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
            assert text == tok.decode(ids[len(enc(s)[0]):], skip_special_tokens=True).split("\n")[0].strip()
        # without the forced newline: at most 50 new tokens
        long = generate(model, enc, batch[:1], max_new_tokens=50)[0]
        assert len(tok(long, add_special_tokens=False).input_ids) <= 51


def test_generation_task_via_the_script(tiny, tmp_path):
    r = run_script(["--model_name", tiny, "--task_name", "SQuAD", "--output_dir", str(tmp_path),
                    "--max_new_tokens", "8", *FAST])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "zero-shot test f1:" in r.stdout and "final test f1:" in r.stdout
    m = json.load(open(tmp_path / "training_metrics.json"))
    assert set(m["final"]["test"]) == {"f1", "em"} and math.isfinite(m["steps"][0]["loss"])


# ----------------------------------------------------------------------------- OPT first token
def test_opt_prompts_start_with_token_0_like_the_reference(tiny_opt, tiny):
    from transformers import AutoConfig, AutoTokenizer
    _, sp = _splits("SST2", n_eval=2)
    s = sp.test[0]
    tok = AutoTokenizer.from_pretrained(tiny_opt)
    assert tok(s.prompt).input_ids[0] == tok.bos_token_id != 0
    assert AutoConfig.from_pretrained(tiny_opt).model_type == "opt"
    opt_ids = Encoder(tok, 256, model_type="opt")(s)[0]
    llama_ids = Encoder(tok, 256, model_type="llama")(s)[0]
    assert opt_ids[0] == 0 and opt_ids[1:] == llama_ids[1:] and llama_ids[0] == tok.bos_token_id


def test_opt_family_inferred_and_trains(tiny_opt, tmp_path):
    args, res = _run(["--model_name", tiny_opt, "--task_name", "Copa", "--output_dir", str(tmp_path), *FAST])
    assert args.model.family == "opt" and args.model.task_family == "causal"
    assert math.isfinite(res["steps"][0]["loss"])


# ----------------------------------------------------------------------------- masked LM (RoBERTa)
@pytest.mark.parametrize("name", MLM)
def test_mlm_task_scores_label_words_at_the_mask_and_takes_a_mezo_step(name, tiny_roberta, tmp_path):
    args, res = _run(["--model_name", tiny_roberta, "--task_name", name, "--k", "16", "--data_seed", "13",
                      "--output_dir", str(tmp_path), *FAST])
    assert args.model.family == "roberta" and args.model.task_family == "mlm"
    from transformers import AutoModelForMaskedLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_roberta)
    model = AutoModelForMaskedLM.from_pretrained(tiny_roberta).eval()
    enc = make_encoder(tok, model, args.model.max_length, args.model.task_family)
    task = get_task(name, family="mlm")
    from mezo.tasks import load_kshot
    rows = load_kshot(task, TEST_DATA, 16, 13)
    samples = [task.sample(r) for r in rows["train"][:6]]
    with torch.no_grad():
        logits = mask_logits(model, enc, samples)
        for s, lg in zip(samples, logits):
            e = enc.encode(s)
            assert e.prompt[e.mask_pos] == tok.mask_token_id and e.prompt[0] == tok.bos_token_id
            words = [c[0] for c in e.cands]
            assert len(set(words)) == len(task.template.words) == lg.shape[0]
            full = model(input_ids=torch.tensor([e.prompt])).logits[0, e.mask_pos, words]
            # head at the mask only = full logits, up to the rounding of a GEMM of another
            # shape: torch.testing's float32 defaults (rtol 1.3e-6, atol 1e-5)
            torch.testing.assert_close(lg, full)
        loss, n = loss_terms(model, enc, samples, "classification")
        ref = F.cross_entropy(torch.stack(logits), torch.tensor([s.label for s in samples]), reduction="sum")
        # 6 fp32 cross-entropies summed in another order: at most 5 roundings of 2^-24 (3e-7)
        assert n == len(samples) and float(loss) == pytest.approx(float(ref), rel=1e-6)
    s0 = res["steps"][0]
    assert math.isfinite(s0["loss_plus"]) and s0["loss_plus"] != s0["loss_minus"]
    acc = res["final"]["test"]["accuracy"]
    assert 0 <= acc <= 1
    # masked LMs select by dev accuracy (the reference's medium_models); the dev loss is still recorded
    assert res["final"]["selected"]["criterion"] == "dev_accuracy" and math.isfinite(res["evals"][-1]["dev_loss"])


def test_mlm_kshot_sampled_from_train_when_no_split_files(tiny_roberta, tmp_path):
    args = config.parse(["--model_name", tiny_roberta, "--task_name", "SST-5", "--data_seed", "42",
                         "--output_dir", str(tmp_path), "--data_dir", TEST_DATA])
    from mezo.splits import build_splits
    sp, _ = build_splits(args.data, get_task("SST-5", family="mlm"))
    task = get_task("SST-5", family="mlm")
    counts = {}
    for s in sp.train:
        counts[s.label] = counts.get(s.label, 0) + 1
    assert args.data.k == 16 and max(counts.values()) <= 16 and len(counts) == 5  # per class, all classes
    assert not {id(s.data) for s in sp.train} & {id(s.data) for s in sp.dev}
    assert len(sp.test) == len(task.load_split("test", TEST_DATA))  # SST-5 test.jsonl, <= 1000


def test_mlm_run_via_the_script(tiny_roberta, tmp_path):
    r = run_script(["--model_name", tiny_roberta, "--task_name", "TREC", "--k", "16", "--data_seed", "13",
                    "--output_dir", str(tmp_path), *FAST])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "final test accuracy:" in r.stdout
    exp = json.load(open(tmp_path / "experiment_config.json"))
    assert exp["task"] == "TREC" and exp["args"]["model_family"] == "roberta"


# ----------------------------------------------------------------------------- baselines
def test_zero_shot_evaluates_writes_logs_and_exits(tiny, tmp_path):
    _, res = _run(["--model_name", tiny, "--task_name", "RTE", "--output_dir", str(tmp_path), "--zero_shot",
                   "--num_eval", "6", "--data_dir", TEST_DATA, "--num_train", "0"])
    m = json.load(open(tmp_path / "training_metrics.json"))
    assert m["status"] == "completed" and m["steps"] == [] and m["final"]["baseline"] == "zero_shot"
    assert 0 <= m["final"]["test"]["accuracy"] <= 1 and m["zero_shot"]["test"] == m["final"]["test"]
    preds = [json.loads(l) for l in open(tmp_path / "predictions.jsonl")]
    assert len(preds) == 6


def test_icl_prompts_hold_the_demos_and_fit_the_context(tiny, tmp_path, capsys):
    _, res = _run(["--model_name", tiny, "--task_name", "SST2", "--output_dir", str(tmp_path), "--icl",
                   "--num_demos", "4", "--num_eval", "6", "--data_dir", TEST_DATA])
    assert "icl test accuracy:" in capsys.readouterr().out
    m = json.load(open(tmp_path / "training_metrics.json"))
    assert m["final"]["baseline"] == "icl" and m["icl"]["num_demos"] == 4 and m["steps"] == []
    from mezo.splits import icl_samples
    task, sp = _splits("SST2", n_eval=6)
    rows = task.load_split("train", TEST_DATA)
    icl = icl_samples(task, rows, sp.test, 4)
    for s, orig in zip(icl, sp.test):
        parts = s.prompt.split(TRAIN_SEP)
        assert len(parts) == 5 and parts[-1] == orig.prompt and s.candidates == orig.candidates
        assert all(p.endswith((" terrible", " great")) for p in parts[:-1])  # gold demonstrations
    # 32 demos overflow the tiny model's 256 positions: cut from the left, first token kept
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny)
    enc = make_encoder(tok, AutoModelForCausalLM.from_pretrained(tiny), max_length=2048)
    long = icl_samples(task, rows, sp.test, 32)
    for s in long:
        ids, cands = enc(s)
        assert len(ids) + max(map(len, cands)) <= 256 and ids[0] == tok.bos_token_id
        assert tok.decode(ids[1:]).endswith(s.prompt[-20:])


def test_icl_generation_task(tiny, tmp_path):
    _, res = _run(["--model_name", tiny, "--task_name", "SQuAD", "--output_dir", str(tmp_path), "--icl",
                   "--num_demos", "2", "--num_eval", "3", "--max_new_tokens", "4", "--data_dir", TEST_DATA])
    assert set(res["final"]["test"]) == {"f1", "em"}


# ----------------------------------------------------------------------------- --paper_hparams and flags
def test_paper_hparams_roberta_fill_unless_given(tiny_roberta, tmp_path, capsys):
    args = config.parse(["--model_name", tiny_roberta, "--paper_hparams", "--learning_rate", "1e-5",
                         "--output_dir", str(tmp_path), "--data_dir", TEST_DATA])
    t = args.train
    assert (t.batch_size, args.zo.eps, t.max_steps, t.eval_steps) == (64, 1e-3, 100000, 10000)
    assert t.lr_scheduler_type == "constant" and t.learning_rate == 1e-5  # explicit flag kept
    assert (args.data.k, args.data.task_name, args.data.num_eval) == (16, "SST-2", 1000)
    out = capsys.readouterr().out
    assert "--paper_hparams (roberta, mezo) filled:" in out and "--batch_size 64" in out
    assert "--learning_rate" not in out


def test_paper_hparams_opt_and_lora(tiny_opt, tmp_path, capsys):
    args = config.parse(["--model_name", tiny_opt, "--paper_hparams", "--task_name", "Copa",
                         "--output_dir", str(tmp_path), "--data_dir", TEST_DATA])
    t, d = args.train, args.data
    assert (t.batch_size, t.learning_rate, args.zo.eps, t.max_steps, t.eval_steps) == (16, 1e-7, 1e-3, 20000, 4000)
    assert (d.num_train, d.num_dev, d.num_eval) == (1000, 100, 1000)  # Copa: 100 dev
    lora = config.parse(["--model_name", tiny_opt, "--paper_hparams", "--use_lora", "--lora_r", "4",
                         "--output_dir", str(tmp_path), "--data_dir", TEST_DATA])
    assert (lora.train.learning_rate, lora.zo.eps, lora.peft.lora_r, lora.peft.lora_alpha) == (5e-5, 1e-2, 4, 16)
    plain = config.parse(["--model_name", tiny_opt, "--output_dir", str(tmp_path), "--data_dir", TEST_DATA])
    assert (plain.train.batch_size, plain.train.max_steps) == (16, 300)  # nothing filled without the flag


@pytest.mark.parametrize("family,args,needle", [
    ("roberta", ["--k", "5"], "--k"),
    ("roberta", ["--data_seed", "7"], "--data_seed"),
    ("causal", ["--k", "16"], "--k"),
    ("causal", ["--zero_shot", "--icl"], "--zero_shot"),
    ("causal", ["--icl", "--num_demos", "0"], "--num_demos"),
    ("roberta", ["--icl"], "--icl"),
    ("causal", ["--task_name", "TREC"], "--task_name"),
    ("causal", ["--model_family", "bert"], "--model_family"),
])
def test_bad_task_flags_exit_2_with_one_line(family, args, needle, tiny_roberta):
    model = ["--model_name", tiny_roberta] if family == "roberta" else []  # default: SmolLM2 (not loaded)
    r = run_script(model + args, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], r.stderr

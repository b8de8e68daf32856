"""--zo_method in process, on a tiny random Llama: a block-sparse step leaves every parameter outside
its seed's blocks bit-identical (each numerics, full model, LoRA and prefix), the block choice is a
pure function of the seed, FZOO's coefficients and update against a hand computation, the flags'
rules (bad combinations raise BadInput) and --help's choices."""
import copy
import math
import statistics

import pytest
import torch

from helpers import SAMPLE, build_model

from mezo import methods, models, noise, peft_modes
from mezo.batches import BatchStream, make_loss_fn
from mezo.config import PeftConfig, build_parser, check
from mezo.errors import BadInput
from mezo.scoring import Encoder
from mezo.tasks import get_task
from mezo.zo import ZOEngine

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_model(str(tmp_path_factory.mktemp("tiny_methods")), layers=3)


def _setup(path, mode=None, batch_shape=False):
    """(model, loss_at, loss_for): loss_for(other_model) scores the same batches on another model."""
    torch.manual_seed(0)
    model, tok = models.load(path, None, "fp32", CPU, "causal")
    if mode:
        peft = PeftConfig(use_lora=mode == "lora", prefix_tuning=mode == "prefix", lora_r=4, lora_alpha=8,
                          lora_target_modules=None, lora_dropout=0.0, num_prefix=3, prefix_init_by_real_act=True)
        model = peft_modes.prepare(peft, "mezo", 0, model, tok)
    task = get_task("SST2", family="causal")
    train = [task.sample(r) for r in task.load_split("train", SAMPLE)[:16]]
    enc = Encoder(tok, 128, model_type=getattr(model.config, "model_type", None), family="causal")

    def loss_for(m):
        return make_loss_fn(m, enc, train, BatchStream(len(train), 4, 1, 0, 2), task.train_loss, batch_shape)
    return model, loss_for(model), loss_for


def _trainable(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("numerics,mode", [("stochastic", None), ("master", None), ("reference", None),
                                           ("stochastic", "lora"), ("reference", "prefix")])
def test_block_step_touches_only_its_blocks(tiny, numerics, mode):
    model, loss_at, _ = _setup(tiny, mode, batch_shape=numerics == "stochastic")
    engine = ZOEngine.from_model(model, backend="eager", numerics=numerics, row_groups=2)
    sel = methods.configure(engine, model, "block", 1)
    before = _trainable(model)
    assert set(sel.blocks) >= {"layer.0", "layer.1", "layer.2"}
    touched = set()
    for step in range(3):  # the pending update of step t meets step t+1's (other) blocks in one sweep
        seed = 1000 + step
        engine.step(lambda: loss_at(step), [seed], 1e-2, 1e-3, 0.1, pair_fn=lambda: loss_at.pair(step))
        engine.flush()
        touched |= sel(seed)
        after = _trainable(model)
        for n, p in after.items():
            if n in touched:
                assert not torch.equal(p, before[n]), (step, n)  # chosen: perturbed and updated
            else:
                assert torch.equal(p, before[n]), (step, n)      # never chosen: the same bits
    assert touched and set(before) - touched  # three steps of one block: some parameters kept


def test_block_choice_is_a_pure_function_of_the_seed():
    blocks = [f"layer.{i}" for i in range(30)] + ["other"]
    a = [methods.choose_blocks(s, blocks, 4) for s in range(200)]
    assert a == [methods.choose_blocks(s, list(reversed(blocks)), 4) for s in range(200)]  # not the order
    assert all(len(x) == 4 for x in a) and len(set(a)) > 190  # distinct subsets step to step
    assert methods.block_of("model.layers.12.mlp.up_proj.weight") == "layer.12"
    assert methods.block_of("base_model.model.model.layers.3.self_attn.q_proj.lora_A.default.weight") == "layer.3"
    assert methods.block_of("prefix_keys.2") == "layer.2"
    assert methods.block_of("model.embed_tokens.weight") == methods.block_of("model.norm.weight") == "other"


def test_fzoo_batched_forward_generates_each_direction_once(tiny, monkeypatch):
    """Numerics stochastic: with batched_fn each one-sided loss is one forward of the whole batch
    (its rows in the forwards' groups), so each direction's z is generated once per parameter,
    not once per forward of the batch; the losses, coefficients and update are those of the
    forward-by-forward step, bit for bit (the same GEMM shapes, the same weights)."""
    from collections import Counter
    from mezo import zo
    seeds, lr, eps = [7, 8, 9], 1e-3, 1e-2
    inner, generated = zo.Perturbation.pm, Counter()

    def counting(self, name, t, lo, hi):
        generated[name] += hi - lo
        return inner(self, name, t, lo, hi)
    monkeypatch.setattr(zo.Perturbation, "pm", counting)
    runs = []
    for batched in (False, True):
        generated.clear()
        model, loss_at, _ = _setup(tiny, batch_shape=True)
        engine = ZOEngine.from_model(model, backend="eager", numerics="stochastic", dist="rademacher", row_groups=2)
        out = methods.fzoo_step(engine, lambda: loss_at(0), seeds, lr, eps, 0.0,
                                batched_fn=(lambda: loss_at.batched(0)) if batched else None)
        engine.flush()
        runs.append((out, dict(generated), _trainable(model)))
    (loose, z_loose, theta_loose), (tight, z_tight, theta_tight) = runs
    assert tight == loose
    assert all(torch.equal(theta_tight[k], theta_loose[k]) for k in theta_loose)
    # the batch of 4 in forwards of 2: z of every weight once per direction, not twice (the
    # embedding generates only the rows it looks up, which differ between the two ways)
    whole = {n: v.numel() for n, v in theta_loose.items() if "embed" not in n}
    assert whole and all(z_tight[n] == 3 * k and z_loose[n] == 6 * k for n, k in whole.items())


def test_fzoo_coefficients_and_update_against_a_hand_computation(tiny):
    """Numerics master: the forwards see cast(master + eps u) = theta + eps u in fp32 (what the hand
    computation builds), and the update is applied to the fp32 master, so both are bit-exact."""
    model, loss_at, loss_for = _setup(tiny)
    engine = ZOEngine.from_model(model, backend="eager", numerics="master", dist="rademacher")
    theta = _trainable(model)
    hand = copy.deepcopy(model)
    seeds, lr, eps, n = [7, 8, 9], 1e-3, 1e-2, 3
    grads, losses, sigma = methods.fzoo_step(engine, lambda: loss_at(0), seeds, lr, eps, 0.0)
    engine.flush()

    params, hl = dict(hand.named_parameters()), loss_for(hand)
    z = {s: {k: noise.generate(s, k, 0, v.numel(), "rademacher").view(v.shape) for k, v in theta.items()}
         for s in seeds}
    l0 = hl(0)
    li = []
    for s in seeds:
        for k in theta:
            params[k].data.copy_(theta[k] + eps * z[s][k])
        li.append(hl(0))
    assert [(a, l0) for a in li] == losses  # the same weights, the same forwards: the same bits
    sd = statistics.pstdev(li)
    # two algorithms for the standard deviation (fsum vs statistics' exact-fraction mean): equal
    # to within float64 rounding of a few operations; 1e-12 relative is ~4500 ulps of margin
    assert math.isclose(sigma, sd, rel_tol=1e-12)
    for g, a in zip(grads, li):
        assert math.isclose(g / n, (a - l0) / (n * sd), rel_tol=1e-12)
    # the update with the engine's coefficients, in the engine's order and precision (fp32)
    for k, p in model.named_parameters():
        s = None
        for j, sd_ in enumerate(seeds):
            t = torch.tensor(grads[j] / n, dtype=torch.float32) * z[sd_][k]
            s = t if s is None else s + t
        want = theta[k] - torch.tensor(lr, dtype=torch.float32) * (s + 0.0 * theta[k])
        assert torch.equal(p.detach(), want), k


@pytest.mark.parametrize("argv,needle", [
    (["--zo_method", "fzoo", "--zo_num_samples", "1"], "--zo_num_samples >= 2"),
    (["--zo_blocks", "2"], "--zo_blocks applies to --zo_method block"),
    (["--zo_method", "fzoo", "--zo_blocks", "2"], "--zo_blocks applies to --zo_method block"),
    (["--zo_method", "block", "--zo_blocks", "0"], "--zo_blocks must be >= 1"),
])
def test_bad_method_flags(argv, needle, tmp_path):
    with pytest.raises(BadInput, match=needle.replace("+", r"\+")):
        check(argv + ["--output_dir", str(tmp_path / "o")])


def test_method_defaults_and_settings(tmp_path):
    mezo = check(["--output_dir", str(tmp_path / "a")])
    assert mezo.zo.method == "mezo" and "zo_method" not in mezo.settings()  # mezo's header keeps its keys
    f = check(["--zo_method", "fzoo", "--output_dir", str(tmp_path / "b")])
    assert (f.zo.num_samples, f.zo.dist) == (methods.FZOO_DEFAULT_N, "rademacher")
    assert f.settings()["zo_method"] == "fzoo" and "zo_blocks" not in f.settings()
    b = check(["--zo_method", "block", "--output_dir", str(tmp_path / "c")])
    assert (b.settings()["zo_method"], b.settings()["zo_blocks"]) == ("block", methods.BLOCK_DEFAULT_K)


def test_help_lists_the_methods():
    text = build_parser().format_help()
    assert "{mezo,block,fzoo}" in text and "--zo_blocks" in text


def _fake_run(d, method, n, steps, evals):
    """A run folder with the two files the curves read, in the trainer's layout."""
    import json
    d.mkdir(parents=True)
    (d / "run_config.json").write_text(json.dumps({"trainer": "mezo", "zo_method": method, "zo_num_samples": n,
                                                   "zo_blocks": 4 if method == "block" else None, "seed": 0,
                                                   "learning_rate": 1e-4, "zo_eps": 1e-3}))
    (d / "training_metrics.json").write_text(json.dumps({
        "status": "completed", "steps": [{"step": i + 1, "step_time_s": t} for i, t in enumerate(steps)],
        "evals": [{"step": s, "dev": {"accuracy": a}, "test": {"accuracy": a / 2}, "dev_loss": 0.5} for s, a in evals]}))


def test_wallclock_curves_of_any_runs(tmp_path):
    """analyze_mezo_results.py --wallclock_curves: per evaluation the steps' summed time (evaluation
    left out) and the forward passes of the method (mezo 2 per direction, fzoo N + 1)."""
    import json

    from analyze_mezo_results import main
    from mezo.experiments import curves
    _fake_run(tmp_path / "runs" / "a", "mezo", 1, [30.0, 2.0, 4.0, 3.0], [(2, 0.6), (4, 0.7)])
    _fake_run(tmp_path / "runs" / "b", "fzoo", 4, [50.0, 5.0], [(2, 0.8)])
    got = {c["method"]: c for c in curves.collect([str(tmp_path / "runs" / x) for x in "ab"])}
    # step 1 (compilation) counts as the median of the later steps: 3.0 and 5.0
    assert [(p["train_s"], p["forwards"], p["test_acc"]) for p in got["mezo"]["points"]] == [(5.0, 4, 0.3),
                                                                                             (12.0, 8, 0.35)]
    assert got["mezo"]["first_step_s"] == 30.0
    assert [(p["train_s"], p["forwards"]) for p in got["fzoo"]["points"]] == [(10.0, 10)]
    assert got["fzoo"]["label"] == "fzoo N=4 lr=0.0001 eps=0.001"
    assert main(["--results_dir", str(tmp_path / "runs"), "--output_dir", str(tmp_path / "out"),
                 "--wallclock_curves"]) == 0
    assert (tmp_path / "out" / "wallclock_curves.png").stat().st_size > 10000
    assert len(json.loads((tmp_path / "out" / "wallclock_curves.json").read_text())) == 2

"""Zeroth-order methods beyond MeZO (--zo_method): what a step perturbs, which losses it computes,
and which coefficients it applies. Every method keeps the engine's contract: a step is
(seeds, coefficients) over directions z(seed) that mezo.noise regenerates, so the trajectory line
(seeds, g) replays it, any sharding gives the same bits, and a checkpoint resumes it exactly.

* mezo   (Malladi et al., 2023): per direction L+ = L(theta + eps z), L- = L(theta - eps z),
         g = (L+ - L-) / (2 eps); theta -= lr * (mean_j g_j z_j + wd theta). mezo.zo.ZOEngine.step.
* block  the same two-sided step on a seed-chosen subset of the model's blocks (a block is one
         transformer layer, or "other": embeddings, final norm, head): direction z(s) is zero
         outside blocks(s) = the --zo_blocks blocks whose sha256(seed, block) are smallest, so
         the perturbation and the update sweeps touch only those blocks' parameters (the others
         keep their bits: no z is generated for them, weight decay included). The subset is a
         pure function of the step seed and the block names (the same on every rank).
* fzoo   FZOO-style (Dang et al., 2025, arXiv 2506.09034): one unperturbed forward L0 and N
         one-sided forwards L_i = L(theta + eps u_i), u_i Rademacher (N = --zo_num_samples);
         theta -= lr * (sum_i c_i u_i + wd theta) with c_i = (L_i - L0) / (N sigma), sigma the
         (population) standard deviation of L_1..L_N: the step is normalised by the spread of
         the losses (larger where the landscape is flat, smaller where it is steep). The
         trajectory records g_i = (L_i - L0) / sigma (c_i = g_i / N, what the engine applies), so
         replay needs no losses. sigma = 0 (all N losses equal) gives no information: c = 0.
"""
from __future__ import annotations

import hashlib
import math
import re
from functools import lru_cache

METHODS = ("mezo", "block", "fzoo")
BLOCK_DEFAULT_K = 4  # --zo_blocks when --zo_method block does not set it
FZOO_DEFAULT_N = 4  # --zo_num_samples when --zo_method fzoo does not set it (>= 2: sigma needs two losses)
OTHER = "other"
FZOO_SCHEDULE = "one unperturbed forward, then one forward per one-sided direction"  # training.log
# a transformer layer's index in a parameter name: Llama/OPT "layers.3.", GPT-2 "h.3.", RoBERTa
# "layer.3.", and prefix tuning's per-layer "prefix_keys.3" / "prefix_values.3"
_LAYER = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|prefix_keys|prefix_values)\.(\d+)(?:\.|$)")


def block_of(name: str) -> str:
    """The block a parameter belongs to: "layer.<i>" or "other"."""
    m = _LAYER.search(name)
    return f"layer.{int(m.group(1))}" if m else OTHER


def block_names(names) -> list[str]:
    """The blocks of these parameter names, in first-seen order."""
    return list(dict.fromkeys(block_of(n) for n in names))


def _rank(seed: int, block: str) -> bytes:
    return hashlib.sha256(f"{int(seed)}:{block}".encode()).digest()


def choose_blocks(seed: int, blocks: list[str], k: int) -> frozenset[str]:
    """The k blocks of step seed `seed`: those with the smallest sha256 of "seed:block" (a pure
    function of the seed and the names: no RNG state, the same on any rank and in any version)."""
    return frozenset(sorted(blocks, key=lambda b: _rank(seed, b))[:k])


class BlockSelector:
    """seed -> the trainable parameter names of its blocks (engine.select)."""

    def __init__(self, names: list[str], k: int):
        self.names = list(names)
        self.blocks = block_names(self.names)
        self.k = k
        self._of = {n: block_of(n) for n in self.names}
        self._cached = lru_cache(maxsize=64)(self._select)

    def _select(self, seed: int) -> frozenset[str]:
        chosen = choose_blocks(seed, self.blocks, self.k)
        return frozenset(n for n in self.names if self._of[n] in chosen)

    def __call__(self, seed: int) -> frozenset[str]:
        return self._cached(int(seed))

    def chosen(self, seed: int) -> list[str]:
        return sorted(choose_blocks(seed, self.blocks, self.k), key=self.blocks.index)


def fzoo_grads(l0: float, losses: list[float]) -> tuple[list[float], float]:
    """(g_i = (L_i - L0) / sigma, sigma) with sigma the population standard deviation of the N
    one-sided losses (math.fsum: no order to depend on); g = 0 when sigma is 0."""
    n = len(losses)
    mean = math.fsum(losses) / n
    sigma = math.sqrt(math.fsum((x - mean) ** 2 for x in losses) / n)
    if sigma == 0.0 or not math.isfinite(sigma):
        return ([0.0] * n if sigma == 0.0 else [math.nan] * n), sigma
    return [(x - l0) / sigma for x in losses], sigma


def forwards_per_step(method: str, n: int) -> int:
    """Loss evaluations of the training batch per step (a dual forward [rows; rows] counts 2)."""
    return n + 1 if method == "fzoo" else 2 * n


def fzoo_step(engine, loss_fn, seeds: list[int], lr: float, eps: float, wd: float, batched_fn=None):
    """One FZOO step (see the module docstring). Returns (g per direction, [(L_i, L0)] per
    direction, sigma); the update is scheduled on the engine as MeZO's (coefficients g_i / N).
    batched_fn (numerics stochastic): loss_fn's value from one forward of the whole batch
    (mezo.batches' loss_fn.batched), used for the perturbed losses, so that each direction's z is
    generated once per leaf rather than once per forward of the batch's pieces."""
    fwd = sweep = 0.0
    lap = engine.stopwatch()
    engine.flush()  # the previous update (and, in place, the previous perturbation undone): theta
    sweep += lap()
    l0 = loss_fn()
    fwd += lap()
    losses = []
    for seed in seeds:
        if engine.numerics == "stochastic":
            with engine.perturbation(seed, eps, dual=False, batched=batched_fn is not None):
                losses.append((batched_fn or loss_fn)())
            fwd += lap()
        else:
            engine.displace(seed, +eps)
            sweep += lap()
            losses.append(loss_fn())
            fwd += lap()
    grads, sigma = fzoo_grads(l0, losses)
    engine.schedule_update(seeds, grads, lr, wd)
    sweep += lap()
    engine.timing = {"forward": fwd, "sweep": sweep}
    return grads, [(x, l0) for x in losses], sigma


def replay_moves(engine, method: str, seeds: list[int], eps: float) -> None:
    """Numerics "reference" (in place): the perturbation sweeps a training step made before its
    update, so that a replay makes the same floating-point operations (see trajectory.replay)."""
    if method == "fzoo":
        engine.flush()
        for s in seeds:
            engine.displace(s, +eps)
        return
    for s in seeds:
        engine.displace(s, +eps)
        engine.displace(s, -eps)


def configure(engine, model, method: str, blocks: int | None):
    """Set the engine up for `method`: for block, engine.select from the model's trainable
    parameter names (global names: the same on every rank, sharded or not); returns the
    BlockSelector (None for the other methods). BadInput when --zo_blocks exceeds the blocks."""
    if method != "block":
        return None
    from mezo.errors import BadInput
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    sel = BlockSelector(names, int(blocks))
    if sel.k > len(sel.blocks):
        raise BadInput(f"--zo_blocks {sel.k}: the trainable parameters form only {len(sel.blocks)} blocks "
                       f"({', '.join(sel.blocks[:4])}{', ...' if len(sel.blocks) > 4 else ''})")
    engine.select = sel
    return sel

"""The MeZO reference implementation's step (princeton-nlp/MeZO, large_models/trainer.py:
zo_perturb_parameters + zo_update), kept here only as the baseline our engine is timed against:
four sweeps per step, each re-seeding torch's global generator and drawing one torch.normal
tensor per parameter."""
from __future__ import annotations

import torch


def loss_of(model, ids):
    return model(input_ids=ids, labels=ids).loss


def zo_loss(model, ids):
    """A forward for a zeroth-order step (inference mode; the parameters stay normal tensors)."""
    with torch.inference_mode():
        return loss_of(model, ids)


def pair_loss(model, ids) -> tuple[float, float]:
    """(L+, L-): the LM loss of each half of one forward over [ids; ids] (our dual forward, which
    the engine perturbs +eps / -eps), each computed as loss_of does (Hugging Face's causal LM
    loss: labels shifted left), the logits not copied."""
    with torch.inference_mode():
        logits = model(input_ids=torch.cat([ids, ids])).logits
        labels = torch.nn.functional.pad(ids, (0, 1), value=-100)[:, 1:].reshape(-1)
        n = len(ids)
        return tuple(torch.nn.functional.cross_entropy(h.reshape(-1, h.shape[-1]).float(), labels).item()
                     for h in (logits[:n], logits[n:]))


def reference_step(model, ids, seed, lr=1e-7, eps=1e-3, wd=0.0):
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]

    def perturb(scale):
        torch.manual_seed(seed)
        for _, p in params:
            z = torch.normal(mean=0, std=1, size=p.data.size(), device=p.data.device, dtype=p.data.dtype)
            p.data = p.data + scale * z * eps

    with torch.no_grad():
        perturb(1)
        l1 = zo_loss(model, ids)
        perturb(-2)
        l2 = zo_loss(model, ids)
        g = ((l1 - l2) / (2 * eps)).item()
        perturb(1)
        torch.manual_seed(seed)
        for n, p in params:
            z = torch.normal(mean=0, std=1, size=p.data.size(), device=p.data.device, dtype=p.data.dtype)
            if "bias" not in n and "layer_norm" not in n and "layernorm" not in n:
                p.data = p.data - lr * (g * z + wd * p.data)
            else:
                p.data = p.data - lr * (g * z)

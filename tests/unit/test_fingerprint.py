"""mezo.models.fingerprint on tensors past float32's exact integers (the default model's embedding)."""
import torch
from torch import nn

from mezo import models


def test_large_tensor_is_sampled_to_its_last_element():
    """49152 x 576 = 28311552 elements (SmolLM2-135M's embedding): float32 linspace puts the last
    index at n, one past the end; the default run died there before its first step."""
    m = nn.Module()
    m.w = nn.Parameter(torch.zeros(49152, 576, dtype=torch.bfloat16))
    with torch.no_grad():
        m.w.view(-1)[-1] = 1.0
    a = models.fingerprint(m)
    with torch.no_grad():
        m.w.view(-1)[-1] = 2.0
    assert len(a) == 16 and models.fingerprint(m) != a  # the last element is one of the sampled ones


def old_fingerprint(model, dtype=None, per_tensor=16):
    """mezo.models.fingerprint as it was before the clamp (trajectories since issue 14 carry it)."""
    import hashlib
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        flat = t.detach().reshape(-1)
        n = flat.numel()
        vals = flat[torch.linspace(0, n - 1, steps=min(n, per_tensor)).round().long()] if n else flat
        if dtype is not None and vals.is_floating_point():
            vals = vals.to(dtype)
        h.update(f"{name}:{tuple(t.shape)}:{vals.dtype}:".encode())
        h.update(vals.cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def test_fingerprints_written_before_are_unchanged():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Embedding(1000, 24), nn.Linear(24, 7), nn.LayerNorm(7))
    m.register_buffer("big", torch.randn(1 << 24))  # 2**24 elements: the largest the old sampling always served
    for dtype in (None, torch.bfloat16):
        assert models.fingerprint(m, dtype) == old_fingerprint(m, dtype)

"""Where mezo keeps what it derives once and reuses across runs (converted GGUF models, compiled
CPU kernels): $MEZO_CACHE, else ~/.cache/mezo; MEZO_CACHE=off keeps nothing."""
from __future__ import annotations

import os

ENV = "MEZO_CACHE"


def root() -> str | None:
    """The cache folder, or None when caching is off."""
    r = os.environ.get(ENV) or os.path.join(os.path.expanduser("~"), ".cache", "mezo")
    return None if r == "off" else r

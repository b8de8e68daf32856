import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _private_model_cache(tmp_path_factory):
    """The tests (and the runs they start) keep converted GGUF models in a folder of their own,
    never in the user's ~/.cache/mezo (mezo.models.gguf_cache)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("MEZO_CACHE", str(tmp_path_factory.mktemp("mezo_cache")))
    yield
    mp.undo()

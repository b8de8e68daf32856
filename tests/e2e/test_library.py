"""The README's "MeZO in your own loop" example runs as it stands (on a tiny local model: the
hub is not reachable) and fine-tunes: the saved model differs from the base and reloads."""
import os
import re

import torch

from helpers import ROOT, build_model


def readme_example() -> str:
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    section = text.split("## MeZO in your own loop", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_library_example_runs(tmp_path, monkeypatch):
    code = readme_example()
    assert code.count("\n") <= 25 and 'name = "facebook/opt-125m"' in code
    tiny = build_model(str(tmp_path / "tiny"), arch="opt")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code.replace('"facebook/opt-125m"', repr(tiny)), "README example", "exec"), scope)
    assert torch.isfinite(torch.tensor(scope["g"])) and scope["loss_plus"] != scope["loss_minus"]
    from transformers import AutoModelForCausalLM
    base = AutoModelForCausalLM.from_pretrained(tiny).state_dict()
    tuned = AutoModelForCausalLM.from_pretrained(str(tmp_path / "opt-125m-mezo")).state_dict()
    assert base.keys() == tuned.keys()
    assert any(not torch.equal(base[k], tuned[k]) for k in base)

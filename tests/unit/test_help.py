"""--help of every command shows every flag with its default (argparse's ArgumentDefaultsHelpFormatter
only adds "(default: ...)" to a flag that has help text, so every flag needs some)."""
import re

import pytest


def _help(main, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


def _flags_without_default(text: str) -> list[str]:
    """The --flags whose help entry has no "(default: ...)"."""
    entries = re.split(r"\n  (?=-)", text.split("options:", 1)[1])
    return [e.split()[0] for e in entries if e.strip().startswith("--") and "(default:" not in e]


@pytest.mark.parametrize("entry", ["train", "launch", "grid", "analyze", "replay"])
def test_every_flag_shows_its_default(entry, capsys):
    if entry == "train":
        from mezo.train import main
    elif entry == "launch":
        from launch_experiment import main
    elif entry == "grid":
        from run_mezo_paper_experiments import main
    elif entry == "analyze":
        from analyze_mezo_results import main
    else:
        from mezo.replay import main
    text = _help(main, capsys)
    assert text.count("--") > 5
    assert _flags_without_default(text) == []

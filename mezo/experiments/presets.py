"""Experiment presets: one YAML file per preset in configs/.

A preset file holds
    description: one line shown by --list
    source:      where its values come from (paper table / reference script)
    extends:     optional name of another preset whose fields this one starts from
    script:      optional, the script to run (default accelerate_mezo.py)
    nproc:       optional, processes per node (torchrun when > 1)
    args:        {flag: value} for the script (true -> bare flag, null/false -> omitted)
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import yaml

from mezo.experiments.command import SCRIPT, flag_args, launcher

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG_DIR = os.path.join(ROOT, "configs")
TOP_LEVEL = ("description", "source", "script", "nproc")


@dataclass
class Preset:
    name: str
    description: str = ""
    source: str = ""
    script: str = SCRIPT
    nproc: int = 1
    args: dict = field(default_factory=dict)

    def command(self, nproc: int | None = None, python: str | None = None) -> list[str]:
        n = nproc if nproc is not None else self.nproc
        if self.script != SCRIPT:  # a driver script (the grid runner) launches its own processes
            extra = ["--nproc", str(n)] if n and n > 1 else []
            return launcher(1, python=python) + [self.script] + flag_args(self.args) + extra
        return launcher(n, python=python) + [self.script] + flag_args(self.args)


def preset_names(config_dir: str = CONFIG_DIR) -> list[str]:
    return sorted(f.rsplit(".", 1)[0] for f in os.listdir(config_dir) if f.endswith((".yaml", ".yml")))


def _read(name: str, config_dir: str, seen: tuple = ()) -> dict:
    if name in seen:
        raise ValueError(f"preset {name!r} extends itself: {' -> '.join(seen + (name,))}")
    for ext in (".yaml", ".yml"):
        path = os.path.join(config_dir, name + ext)
        if os.path.exists(path):
            break
    else:
        raise KeyError(f"unknown preset {name!r}; known: {', '.join(preset_names(config_dir))}")
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    base = data.pop("extends", None)
    if base:
        parent = _read(base, config_dir, seen + (name,))
        data = {**parent, **{k: v for k, v in data.items() if k != "args"},
                "args": {**parent.get("args", {}), **(data.get("args") or {})}}
    return data


def load(name: str, config_dir: str = CONFIG_DIR) -> Preset:
    data = _read(name, config_dir)
    unknown = set(data) - set(TOP_LEVEL) - {"args"}
    if unknown:
        raise ValueError(f"preset {name!r}: unknown fields {sorted(unknown)}")
    return Preset(name=name, args=dict(data.get("args") or {}), **{k: data[k] for k in TOP_LEVEL if k in data})


def parse_value(text: str):
    """YAML scalars: true/false/null/ints; anything else (including 1e-7) stays the text."""
    value = yaml.safe_load(text) if text != "" else ""
    return value if isinstance(value, (bool, int, float, type(None), list)) else text


def apply_overrides(preset: Preset, overrides: list[str]) -> Preset:
    """key=value; key is a flag of args, or one of nproc/script/description/source."""
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"--override expects key=value, got {item!r}")
        key, text = item.split("=", 1)
        key = key.strip().removeprefix("--").removeprefix("args.")
        value = parse_value(text)
        if key in TOP_LEVEL:
            setattr(preset, key, int(value) if key == "nproc" else value)
        else:
            preset.args[key] = value
    return preset


def describe_all(config_dir: str = CONFIG_DIR) -> list[tuple[str, str]]:
    return [(n, load(n, config_dir).description) for n in preset_names(config_dir)]

"""Experiment presets: one YAML file per preset in configs/.

A preset file holds
    description: one line shown by --list
    source:      where its values come from (paper table / reference script)
    extends:     optional name of another preset (in the same folder) whose fields this one starts from
    script:      optional, the script to run (default accelerate_mezo.py)
    nproc:       optional, processes per node (torchrun when > 1); the launcher's, not the script's
    args:        {flag: value} for the script (true -> bare flag, null/false -> omitted)

The paper presets say `paper_hparams: true` instead of restating the paper's values: the entry
point fills them from mezo/hparams.py for the preset's family, mode and task.

Two readers: the entry point, `accelerate_mezo.py --config configs/<name>.yaml [flags]`, through
argv_with_config (flags on the command line override the preset's), and launch_experiment.py
(load, apply_overrides, Preset.command). No torch and no mezo.config here: mezo.config imports
this module, so the parser comes in as an argument.
"""
from __future__ import annotations

import difflib
import hashlib
import os
import re
from dataclasses import dataclass, field

import yaml

from mezo.experiments.command import SCRIPT, flag_args, launcher

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG_DIR = os.path.join(ROOT, "configs")
TOP_LEVEL = ("description", "source", "script", "nproc")
SCRIPTS = (SCRIPT, "run_mezo_paper_experiments.py")   # what a preset may run
FIELDS = TOP_LEVEL + ("extends", "args")
EXTENSIONS = (".yaml", ".yml")


@dataclass
class Preset:
    name: str
    path: str = ""                  # the file named (not the presets it extends)
    description: str = ""
    source: str = ""
    script: str = SCRIPT
    nproc: int = 1
    args: dict = field(default_factory=dict)
    arg_files: dict = field(default_factory=dict)   # flag -> the file (of the extends chain) that sets it
    overrides: dict = field(default_factory=dict)   # launch_experiment.py --override flags

    def command(self, nproc: int | None = None, python: str | None = None) -> list[str]:
        """The command that runs the preset: the training script reads the preset itself
        (--config) and the overrides follow it; a driver script (the grid runner) gets every
        flag and launches its own processes."""
        n = nproc if nproc is not None else self.nproc
        if self.script != SCRIPT:
            extra = ["--nproc", str(n)] if n and n > 1 else []
            return launcher(1, python=python) + [self.script] + flag_args({**self.args, **self.overrides}) + extra
        removed = [k for k, v in self.overrides.items() if v in (None, False) and self.args.get(k) not in (None, False)]
        if removed:  # a flag given after --config can replace the preset's value, not take it away
            key = removed[0]
            raise ValueError(f"--override {key}={'null' if self.overrides[key] is None else 'false'}: preset "
                             f"{self.name!r} sets {key}, and a command-line flag cannot remove it; write a preset "
                             f"with extends: {self.name} and {key}: false")
        return launcher(n, python=python) + [SCRIPT, "--config", _relative(self.path, ROOT)] + flag_args(self.overrides)


def preset_names(config_dir: str = CONFIG_DIR) -> list[str]:
    return sorted(f.rsplit(".", 1)[0] for f in os.listdir(config_dir) if f.endswith(EXTENSIONS))


def _relative(path: str, start: str) -> str:
    """`path` relative to `start` when it lies under it, else absolute (how files are named)."""
    rel = os.path.relpath(os.path.abspath(path), start)
    return os.path.abspath(path) if rel.startswith("..") else rel


def _known(name: str, config_dir: str) -> str:
    """The presets that `name` may have meant, or all of them."""
    names = preset_names(config_dir)
    close = difflib.get_close_matches(name, names, n=3)
    return f"did you mean: {', '.join(close)}" if close else f"known: {', '.join(names)}"


def find(name_or_path: str, config_dir: str = CONFIG_DIR) -> str:
    """The file of a preset: an existing YAML file, or a name in config_dir."""
    if name_or_path.endswith(EXTENSIONS) or os.sep in name_or_path:
        if os.path.isfile(name_or_path):
            return name_or_path
        stem = os.path.basename(name_or_path).rsplit(".", 1)[0]
        raise ValueError(f"{name_or_path}: no such preset file (presets in {_relative(config_dir, os.getcwd())}/: "
                         f"{_known(stem, config_dir)})")
    for ext in EXTENSIONS:
        path = os.path.join(config_dir, name_or_path + ext)
        if os.path.isfile(path):
            return path
    raise ValueError(f"unknown preset {name_or_path!r} (no {_relative(config_dir, os.getcwd())}/{name_or_path}.yaml); "
                     f"{_known(name_or_path, config_dir)}")


def _yaml(path: str, shown: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise ValueError(f"{shown}{where}: invalid YAML: {getattr(e, 'problem', None) or e}") from None
    except OSError as e:
        raise ValueError(f"{shown}: cannot read ({e.strerror or e})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{shown}: a preset is a mapping of {', '.join(FIELDS)} (got {type(data).__name__})")
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise ValueError(f"{shown}: unknown field {unknown[0]!r} (valid: {', '.join(FIELDS)})")
    nproc = data.get("nproc", 1)
    if not isinstance(nproc, int) or isinstance(nproc, bool) or nproc < 1:
        raise ValueError(f"{shown}: nproc must be a number of processes >= 1 (got {nproc!r})")
    if "script" in data and data["script"] not in SCRIPTS:
        raise ValueError(f"{shown}: script {data['script']!r} is not one of {', '.join(SCRIPTS)}")
    args = data.get("args")
    if args is not None and not isinstance(args, dict):
        raise ValueError(f"{shown}: args is a mapping of flag: value (got {type(args).__name__})")
    return data


def _read(path: str, seen: tuple = ()) -> tuple[dict, dict]:
    """The preset's fields with its `extends` chain applied, and flag -> the file that sets it."""
    shown = _relative(path, os.getcwd())
    if os.path.abspath(path) in seen:
        raise ValueError(f"{shown}: extends itself: {' -> '.join(map(os.path.basename, seen + (path,)))}")
    data = _yaml(path, shown)
    args = dict(data.get("args") or {})
    files = dict.fromkeys(args, shown)
    base = data.pop("extends", None)
    if base:
        try:
            base_path = find(str(base), os.path.dirname(path))
        except ValueError as e:
            raise ValueError(f"{shown}: extends: {e}") from None
        parent, parent_files = _read(base_path, seen + (os.path.abspath(path),))
        data = {**parent, **data}
        args = {**parent.get("args", {}), **args}
        files = {**parent_files, **files}
    data["args"] = args
    return data, files


def load(name: str, config_dir: str = CONFIG_DIR) -> Preset:
    """A preset by name (configs/<name>.yaml) or by file path; ValueError names what is wrong."""
    path = find(name, config_dir)
    data, files = _read(path)
    stem = os.path.basename(path).rsplit(".", 1)[0]
    return Preset(name=stem, path=path, args=data["args"], arg_files=files,
                  **{k: data[k] for k in TOP_LEVEL if k in data})


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
        if key == "nproc":
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"--override {item}: nproc is a number of processes >= 1")
            preset.nproc = value
        elif key in TOP_LEVEL:
            setattr(preset, key, value)
        else:
            preset.overrides[key] = value
    return preset


def describe_all(config_dir: str = CONFIG_DIR) -> list[tuple[str, str]]:
    return [(n, load(n, config_dir).description) for n in preset_names(config_dir)]


# ---------------------------------------------------------------- the entry point's --config
def _split_config(argv: list[str]) -> tuple[str | None, list[str]]:
    """(the --config value or None, argv without it)."""
    value, rest, i = None, [], 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--config" or arg.startswith("--config="):
            if value is not None:
                raise ValueError("--config is given twice: pass one preset (a preset can extend another)")
            if arg == "--config":
                if i + 1 == len(argv) or argv[i + 1].startswith("--"):
                    raise ValueError("--config needs a preset: configs/<name>.yaml or a name "
                                     f"({', '.join(preset_names())})")
                value, i = argv[i + 1], i + 2
            else:
                value, i = arg.split("=", 1)[1], i + 1
            continue
        rest.append(arg)
        i += 1
    return value, rest


def _parser_flags(parser) -> set[str]:
    """The --flags of an argparse parser, without the dashes ('help' and 'config' excluded)."""
    flags = {opt[2:] for action in parser._actions for opt in action.option_strings if opt.startswith("--")}
    return flags - {"help", "config"}


def _check_args(preset: Preset, parser) -> None:
    valid = _parser_flags(parser)
    for key, value in preset.args.items():
        shown = preset.arg_files.get(key, preset.path)
        if key == "config":
            raise ValueError(f"{shown}: args cannot hold config (a preset starts from another with extends: NAME)")
        if key not in valid:
            close = difflib.get_close_matches(key, sorted(valid), n=3)
            hint = f"valid: {', '.join(close)}" if close else f"see {parser.prog} --help for the flags"
            raise ValueError(f"{shown}: unknown flag {key!r} in args ({hint})")
        if isinstance(value, dict):
            raise ValueError(f"{shown}: args: {key} must be a number, text, true/false/null or a list, not a mapping")


def argv_with_config(argv: list[str], parser) -> list[str]:
    """The command line with `--config PATH` (or `--config=PATH`) replaced by the preset's args as
    flags, placed first so that the flags given on the command line override them (argparse: the
    last value wins). PATH is a YAML file or a preset name in configs/; `extends:` applies. Without
    --config, argv comes back unchanged. `parser` is the entry point's argparse parser (its flags
    are the valid keys of args); the preset's `nproc` is the launcher's and is ignored here.

    A preset's output_dir is a folder per variant: flags on the command line that change the run
    are appended to its name (derived_output_dir), so `--seed 1` after a preset never writes
    into the folder of the preset's own run; an --output_dir on the command line is used as given.

    A store_true flag the preset switches on (e.g. `paper_hparams: true`) cannot be switched off
    from the command line (argparse has no --no_ form for it): write a preset that extends this
    one and sets the flag to false.

    Raises ValueError with one line naming the file (and the key): a missing file, invalid YAML,
    an unknown field or flag, a preset for another script (run that one with launch_experiment.py).
    """
    value, rest = _split_config(list(argv))
    if value is None:
        return list(argv)
    preset = load(value)
    if preset.script != SCRIPT:
        raise ValueError(f"{_relative(preset.path, os.getcwd())}: script is {preset.script}, not {SCRIPT}: "
                         f"run it with python launch_experiment.py --config {preset.name}")
    _check_args(preset, parser)
    argv = flag_args(preset.args) + rest
    out = derived_output_dir(preset.args.get("output_dir"), _given(rest, parser))
    return argv + (["--output_dir", out] if out else [])


# flags that change where or how a run is written, resumed or computed, never its numbers: they
# do not name a run
NOT_IN_RUN_NAME = frozenset({
    "output_dir", "overwrite_output_dir", "resume_from_checkpoint", "resume_trajectory", "save_steps",
    "save_total_limit", "save_model", "log_steps", "memory_logging", "memory_interval", "zo_backend",
    "forward_batch_size", "eval_batch_size"})


def _given(argv: list[str], parser) -> dict:
    """{dest: the value as typed (True for a bare flag)} of the parser's flags in `argv`; the last wins."""
    out, i = {}, 0
    while i < len(argv):
        flag, eq, text = argv[i].partition("=")
        action = parser._option_string_actions.get(flag) if flag.startswith("--") else None
        i += 1
        if action is None:
            continue
        if eq:
            value = text
        elif action.nargs == 0:
            value = True
        else:
            value = argv[i] if i < len(argv) else ""
            i += 1
        out.pop(action.dest, None)
        out[action.dest] = value
    return out


def derived_output_dir(base, given: dict) -> str | None:
    """The preset's output_dir with the command line's flags in its name, so each variant of a
    preset gets its own folder: `outputs/quick_test` + `--seed 1 --learning_rate 3e-4` ->
    `outputs/quick_test__seed-1__learning_rate-3e-4`. None: no preset folder, --output_dir given,
    or no flag that changes the run."""
    if not base or "output_dir" in given:
        return None
    parts = []
    for dest, value in given.items():
        if dest in NOT_IN_RUN_NAME:
            continue
        if value is True:
            parts.append(dest)
        else:
            text = str(value).rstrip("/")
            text = os.path.basename(text) if os.sep in text else text  # a model folder: its name
            parts.append(f"{dest}-{re.sub(r'[^A-Za-z0-9._+-]', '_', text)}")
    if not parts:
        return None
    name = "__".join(parts)
    if len(name) > 100:  # stays unique: the full name's hash
        name = name[:90] + "-" + hashlib.sha1(name.encode()).hexdigest()[:8]
    return f"{str(base).rstrip('/')}__{name}"

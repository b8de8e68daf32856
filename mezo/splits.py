"""Train / dev / test samples for a run, and the in-context-learning (ICL) test samples.

Causal tasks: the reference's sampling (mezo.tasks.make_splits). Masked-LM tasks: LM-BFF k-shot
data, from its split files <data_dir>/k-shot/<TASK>/<k>-<seed>/ when present, else sampled
per class from the train split (mezo.tasks.kshot_splits); test = the split files' test set,
else the task's evaluation split (<= 1000 rows, LM-BFF's k-shot-1k-test), cut to --num_eval
when that flag is given. ICL: each test sample's prompt is prefixed with --num_demos gold
demonstrations drawn from the whole train split, one demo set per test sample (large_models/
icl.sh runs run.py without --train_set_seed: seeds np.random.seed(0); randint(0, 10000)).
"""
from __future__ import annotations

import os
from dataclasses import replace

from mezo.errors import BadInput
from mezo.tasks import Splits, icl_prompt, kshot_test, load_kshot, make_splits
from mezo.tasks.base import Sample, Task, permutation_subset
from mezo.tasks.mlm import kshot_rows
from mezo.telemetry import log

EVAL_FALLBACKS = ("test", "validation", "validation_from_train")


def mlm_sources(task, data_dir: str, k: int, seed: int) -> dict:
    """Where a masked-LM task's data comes from under data_dir: {"kshot": folder or None,
    "train": split file or None, "test": ("kshot", None) | (split name, file)}. Raises
    FileNotFoundError naming what is missing."""
    folder = os.path.join(data_dir, "k-shot", task.kshot_name, f"{k}-{seed}")
    kshot = folder if os.path.isdir(folder) and os.listdir(folder) else None
    train = task.split_file(data_dir, task.train_split)
    train = train if os.path.exists(train) else None
    if kshot is None and train is None:
        raise FileNotFoundError(f"neither LM-BFF split files k-shot/{task.kshot_name}/{k}-{seed}/ nor "
                                f"{task.data_path}/{task.train_split}.jsonl for task {task.name}")
    test = None
    if kshot and any(os.path.exists(os.path.join(folder, f"test{m}.{e}")) for m in ("", "_matched")
                     for e in ("tsv", "csv")):
        test = ("kshot", None)
    else:
        for split in (task.eval_split, *EVAL_FALLBACKS):
            path = task.split_file(data_dir, split)
            if os.path.exists(path):
                test = (split, path)
                break
    if test is None:
        raise FileNotFoundError(f"no test data for task {task.name}: no k-shot test file and no "
                                f"{task.data_path}/{task.eval_split}.jsonl")
    return {"kshot": kshot, "train": train, "test": test}


def _mlm_splits(data, task) -> Splits:
    k, seed, data_dir = data.k, data.data_seed, data.data_dir
    if data_dir is None:  # the hub
        train_rows = task.load_split(task.train_split)
        sp = kshot_splits_from_rows(task, train_rows, k, seed, task.load_split(task.eval_split))
        return sp
    src = mlm_sources(task, data_dir, k, seed)
    if src["kshot"]:
        files = load_kshot(task, data_dir, k, seed)
        train = [task.sample(r) for r in files["train"]]
        dev = [task.sample(r) for r in files.get("dev", [])]
        log.info("%s: LM-BFF split files %s", task.name, src["kshot"])
    else:
        train_r, dev_r = kshot_rows(task, task.load_split(task.train_split, data_dir), k, seed)
        train, dev = [task.sample(r) for r in train_r], [task.sample(r) for r in dev_r]
        log.info("%s: k-shot sampled from %s (k=%d, seed %d)", task.name, src["train"], k, seed)
    split, _ = src["test"]
    if split == "kshot":
        test = kshot_test(task, load_kshot(task, data_dir, k, seed)["test"])
    else:
        if split != task.eval_split:
            log.warning("%s: test from %s.jsonl (the paper's is %s, absent here)", task.name, split, task.eval_split)
        test = kshot_test(task, task.load_split(split, data_dir))
    return Splits(train, dev, test)


def kshot_splits_from_rows(task, train_rows, k, seed, eval_rows) -> Splits:
    from mezo.tasks import kshot_splits
    return kshot_splits(task, train_rows, k, seed, eval_rows)


def build_splits(data, task: Task, trainer: str = "mezo") -> tuple[Splits, list[dict] | None]:
    """(splits, all train rows or None) for a mezo.config.DataConfig: the rows are what ICL
    draws its demos from. --zero_shot needs no train split, --icl no train/dev samples."""
    if data.family == "mlm":
        sp = _mlm_splits(data, task)
        if data.num_eval is not None:
            sp.test = sp.test[:data.num_eval]
        return sp, None
    hub = (data.dataset, data.dataset_config) if data.dataset else (None, None)
    eval_rows = task.load_split(task.eval_split, data.data_dir, *hub)
    if trainer == "zero_shot":  # nothing is trained: no train split needed (BoolQ has none locally)
        sp = make_splits(task, [], eval_rows, num_train=0, num_dev=0, num_eval=data.num_eval,
                         train_set_seed=data.train_set_seed)
        return sp, []
    train_rows = task.load_split(task.train_split, data.data_dir, *hub)
    num_train = 0 if trainer == "icl" else data.num_train
    num_dev = 0 if trainer == "icl" else data.num_dev
    if trainer != "icl":
        num_train = _fit_train(task, data, len(train_rows), num_train, num_dev or 0)
    sp = make_splits(task, train_rows, eval_rows, num_train=num_train, num_dev=num_dev,
                     num_eval=data.num_eval, train_set_seed=data.train_set_seed)
    return sp, train_rows


def _source(task: Task, data, split: str) -> str:
    """How an error names a split: its file, or the hub dataset."""
    if data.data_dir:
        return task.split_file(data.data_dir, split)
    name = "/".join(x for x in (data.dataset or task.hf_path, data.dataset_config or task.hf_config) if x)
    return f"{name} (hub, {split})"


def _fit_train(task: Task, data, n_rows: int, num_train: int, num_dev: int) -> int:
    """The train size the rows allow: dev comes first (--num_dev), train takes what is left; a
    warning line when that is less than --num_train, BadInput when nothing is left."""
    left = n_rows - num_dev
    src = _source(task, data, task.train_split)
    if left < 1:
        raise BadInput(f"--num_dev {num_dev} leaves nothing to train on: {src} has {n_rows} rows "
                       f"(lower --num_dev)")
    if num_train > left:
        log.warning("--num_train %d: %s has %d rows and --num_dev takes %d of them: training on the %d left",
                    num_train, src, n_rows, num_dev, left)
    return min(num_train, left)


def check_requests(splits: Splits, train) -> None:
    """What the flags ask of the sampled data, checked before the model loads: a batch larger
    than the train set repeats examples (one warning line)."""
    if train.baseline or train.trainer == "linear_probe":
        return
    n = len(splits.train)
    if train.batch_size > n:
        log.warning("--batch_size %d is larger than the %d training examples: each step's batch takes them "
                    "from consecutive shuffles, so some appear twice", train.batch_size, n)


def check_scaffold(task: Task, sample: Sample, tok, max_length: int, family: str, max_new_tokens: int) -> None:
    """BadInput when --max_length cannot hold the task's prompt scaffold: the template and its
    longest answer with every text column empty (what no truncation can shorten)."""
    from mezo.scoring import Encoder
    row = {k: ("" if k in task.columns and isinstance(v, str) else v) for k, v in sample.data.items()}
    try:
        bare = task.sample(row)
    except (KeyError, ValueError, IndexError):
        return
    enc = Encoder(tok, 10 ** 9, family=family, max_new_tokens=max_new_tokens)
    e = enc.encode(bare)
    reserve = max([len(c) for c in e.cands] + [len(e.gold or [])] + ([max_new_tokens] if not bare.candidates else []))
    need = len(e.prompt) + (0 if family == "mlm" else reserve)
    if max_length < need:
        raise BadInput(f"--max_length {max_length} is shorter than task {task.name}'s prompt scaffold: {need} "
                       f"tokens without any text (the template"
                       f"{'' if family == 'mlm' else ' and its longest answer, or --max_new_tokens when generating'})")


def icl_samples(task: Task, train_rows: list[dict], test: list[Sample], num_demos: int,
                max_tokens: int | None = None, count_tokens=None, reserve: int = 0,
                seeds: list[int] | None = None) -> list[Sample]:
    """Each test sample with `num_demos` demonstrations in front (reference ICL formatting,
    mezo.tasks.icl); demo set i is permutation(len(train_rows)) with seed seeds[i] (default:
    the reference's per-sample seeds). Rows with no gold (ReCoRD without answers) are skipped."""
    import numpy as np
    if seeds is None:
        seeds = np.random.RandomState(0).randint(0, 10000, len(test)).tolist()
    out = []
    for s, seed in zip(test, seeds):
        demos = []
        for i in permutation_subset(len(train_rows), seed, None):
            d = task.sample(train_rows[i])
            if d.label is not None or d.target is not None:
                demos.append(d)
            if len(demos) == num_demos:
                break
        prompt = icl_prompt(task, demos, s, max_tokens=max_tokens, count_tokens=count_tokens, reserve=reserve)
        out.append(replace(s, prompt=prompt))
    return out

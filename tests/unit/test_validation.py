"""Data and model-folder checks (mezo/tasks/base.py, mezo/tasks/*, mezo/models.py): every row of a
split is checked as it is read, each problem named FILE:LINE; a model folder is checked from its
files alone. No model is loaded here."""
import json
import os
import shutil

import pytest

from helpers import SHARED_DATA, TEST_DATA
from mezo import models
from mezo.errors import BadInput
from mezo.tasks import MLM_TASKS, TASKS, get_task, load_kshot
from mezo.tasks.base import read_jsonl


def _split(tmp_path, lines, task="SST2", split="train", family="causal"):
    t = get_task(task, family=family)
    path = tmp_path / t.data_path / f"{split}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\n".join(x if isinstance(x, bytes) else x.encode() for x in lines) + b"\n")
    return t, str(tmp_path), str(path)


GOOD = '{"sentence": "a fine film", "label": 1, "idx": 0}'


@pytest.mark.parametrize("bad_line, needle", [
    ('{"sentence": "cut off', "not valid JSON (Unterminated string"),
    (b'{"sentence": "caf\xe9", "label": 1}', "not UTF-8 (byte 0xe9 at column 18)"),
    ('[1, 2]', "one JSON object (a row) per line expected, got list"),
    ('{"text": "x", "label": 1}', "no column 'sentence' (the row has 'text', 'label'; task SST2 needs 'sentence', "
                                  "'label'); --text_column names the column that holds the text"),
    ('{"sentence": "x", "label": 5}', "label 5 is not one of task SST2's labels: 0 (terrible), 1 (great)"),
    ('{"sentence": "x", "label": -1}', "label -1 is not one of task SST2's labels: 0 (terrible), 1 (great) "
                                       "(-1 marks an unlabelled row"),
    ('{"sentence": "x", "label": "positive"}', "label 'positive' is not one of"),
    ('{"sentence": "x", "label": true}', "label True is not one of"),
    ('{"sentence": null, "label": 1}', "column 'sentence' holds NoneType None, not text"),
])
def test_each_bad_row_is_named_by_file_and_line(tmp_path, bad_line, needle):
    """The bad row is line 51 of 60, after a blank line: the message gives that line, not 'line 1'."""
    lines = [GOOD] * 49 + [""] + [bad_line] + [GOOD] * 9
    t, data_dir, path = _split(tmp_path, lines)
    with pytest.raises(BadInput) as e:
        t.load_split("train", data_dir)
    assert str(e.value).startswith(f"{path}:51: ") and needle in str(e.value), str(e.value)
    assert "\n" not in str(e.value)


def test_empty_split_and_text_column(tmp_path):
    t, data_dir, path = _split(tmp_path, [""])
    with pytest.raises(BadInput, match="train.jsonl: empty \\(no rows\\)"):
        t.load_split("train", data_dir)
    _, data_dir, path = _split(tmp_path, [GOOD])
    with pytest.raises(BadInput, match=r"train.jsonl:1: --text_column review: no such column \(the row has "
                                       r"'sentence', 'label', 'idx'\)"):
        get_task("SST2", text_column="review").load_split("train", data_dir)
    rows, lines = read_jsonl(path)
    assert rows == [json.loads(GOOD)] and lines == [1]


@pytest.mark.parametrize("task, family, row, needle", [
    ("Copa", "causal", {"premise": "p", "choice1": "a", "choice2": "b", "question": "why", "label": 0},
     "question 'why' is neither 'cause' nor 'effect'"),
    ("BoolQ", "causal", {"question": "q", "passage": "p", "answer": "yes"}, "answer 'yes' is not true or false"),
    ("SQuAD", "causal", {"context": "c", "question": "q", "answers": {"text": []}}, "has no gold answer texts"),
    ("ReCoRD", "causal", {"passage": "p", "query": "q @placeholder", "entities": ["A"], "answers": ["B"]},
     "the first answer must be one of the entities"),
    ("CB", "causal", {"premise": "p", "hypothesis": "h", "label": 3}, "0 (Yes), 1 (No), 2 (Maybe)"),
    ("TREC", "mlm", {"text": "q", "label": 1}, "no column 'coarse_label'"),
    ("SST-5", "mlm", {"text": "t", "label": 5}, "0 (terrible), 1 (bad), 2 (okay), 3 (good), 4 (great)"),
    ("RTE", "mlm", {"sentence1": "a", "label": 0}, "no column 'sentence2'"),
])
def test_task_specific_row_checks(task, family, row, needle):
    assert needle in get_task(task, family=family).check_row(row)


def test_snli_unlabelled_rows_are_allowed_but_not_a_whole_split(tmp_path):
    row = '{"premise": "a", "hypothesis": "b", "label": %d}'
    t, data_dir, _ = _split(tmp_path, [row % 0, row % -1], task="SNLI", family="mlm")
    assert len(t.load_split("train", data_dir)) == 2  # -1 rows are dropped later, as LM-BFF does
    t, data_dir, _ = _split(tmp_path, [row % -1, row % -1], task="SNLI", family="mlm")
    with pytest.raises(BadInput, match="every row is unlabelled"):
        t.load_split("train", data_dir)


def test_lmbff_split_file_rows_are_named(tmp_path):
    task = get_task("SST-2", family="mlm")
    folder = tmp_path / "k-shot" / "SST-2" / "16-13"
    folder.mkdir(parents=True)
    (folder / "train.tsv").write_text("sentence\tlabel\na good one\t1\nno label here\n")
    with pytest.raises(BadInput, match=r"train.tsv:3: not an LM-BFF SST-2 row \(IndexError"):
        load_kshot(task, str(tmp_path), 16, 13)
    (folder / "train.tsv").write_text("sentence\tlabel\na good one\t1\nbad\t7\n")
    with pytest.raises(BadInput, match=r"train.tsv:3: label 7 is not one of task SST-2's labels"):
        load_kshot(task, str(tmp_path), 16, 13)


def test_every_real_split_passes_the_checks():
    """The checks accept every split of the real data (../shared/data, else the rows in tests/data)."""
    data = SHARED_DATA if os.path.isdir(SHARED_DATA) else TEST_DATA
    seen = 0
    for registry in (TASKS, MLM_TASKS):
        for cls in registry.values():
            t = cls()
            for split in {t.train_split, t.eval_split, "test", "validation", "validation_from_train"}:
                if os.path.exists(t.split_file(data, split)):
                    assert t.load_split(split, data)
                    seen += 1
            if registry is MLM_TASKS and os.path.isdir(os.path.join(data, "k-shot", t.kshot_name, "16-13")):
                assert load_kshot(t, data, 16, 13)
                seen += 1
    assert seen >= 20


# ---------------------------------------------------------------------------------- model folders
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from helpers import build_model
    return build_model(str(tmp_path_factory.mktemp("tiny")))


def _copy(tiny, tmp_path, name):
    d = tmp_path / name
    shutil.copytree(tiny, d)
    return d


def test_model_folder_checks_name_the_file(tiny, tmp_path):
    models.check_folder(tiny)  # a folder save_pretrained wrote passes
    cases = []
    d = tmp_path / "empty"
    d.mkdir()
    cases.append((d, "empty folder"))
    d = _copy(tiny, tmp_path, "noconfig")
    os.unlink(d / "config.json")
    cases.append((d, "no config.json"))
    d = _copy(tiny, tmp_path, "badjson")
    (d / "config.json").write_text('{"model_type": "llama",\n')
    cases.append((d, "config.json:2: not valid JSON"))
    d = _copy(tiny, tmp_path, "unknown")
    (d / "config.json").write_text('{"model_type": "lama"}')
    cases.append((d, "model_type 'lama' is not one transformers"))
    d = _copy(tiny, tmp_path, "notok")
    os.unlink(d / "tokenizer.json")
    cases.append((d, "no tokenizer files"))
    d = _copy(tiny, tmp_path, "truncated")
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    cases.append((d, f"model.safetensors: truncated or corrupt: its tensors need {len(data)} bytes"))
    d = _copy(tiny, tmp_path, "corrupt")
    (d / "model.safetensors").write_bytes(b"\xff" * 8 + data[8:])
    cases.append((d, "model.safetensors: not a safetensors file"))
    d = _copy(tiny, tmp_path, "noweights")
    os.unlink(d / "model.safetensors")
    cases.append((d, "no weights"))
    for folder, needle in cases:
        with pytest.raises(BadInput) as e:
            models.check_folder(str(folder))
        assert needle in str(e.value), (folder, str(e.value))


def test_fingerprint_of_a_tensor_larger_than_float32_counts():
    """The default model's embedding (49152 x 576 = 28,311,552 elements, past 2**24) is
    fingerprinted: the sampled positions are exact integers, the last one the last element (a
    float32 linspace rounded it to n, out of bounds). A change at a sampled position changes the
    fingerprint; one elsewhere does not (it samples 16 elements per tensor)."""
    import torch
    n = 49152 * 576
    m = torch.nn.Module()
    m.w = torch.nn.Parameter(torch.zeros(n, dtype=torch.bfloat16), requires_grad=False)
    a = models.fingerprint(m)
    with torch.no_grad():
        m.w[n - 1] = 1.0
    b = models.fingerprint(m)
    with torch.no_grad():
        m.w[n - 2] = 1.0
    assert a != b and models.fingerprint(m) == b

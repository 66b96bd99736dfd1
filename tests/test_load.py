"""Sources, splits, caps, task types, bundled tasks and the cached data stage."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from damoc.config.schema import DataConfig
from damoc.data import load_data, prepare_data
from damoc.data import load as load_module
from damoc.errors import DataError


def jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def pc_rows(n: int, prefix: str = "p") -> list[dict]:
    return [{"id": f"{prefix}{i}", "prompt": f"{prefix} prompt {i}", "completion": f"answer {i}"} for i in range(n)]


def cfg(source, **kw) -> DataConfig:
    return DataConfig.model_validate({"source": source if isinstance(source, dict) else str(source), **kw})


def ids(records) -> set[str]:
    return {r["id"] for r in records}


def test_directory_with_named_splits(tmp_path):
    jsonl(tmp_path / "d" / "train.jsonl", pc_rows(10, "t"))
    jsonl(tmp_path / "d" / "dev.jsonl", pc_rows(3, "v"))
    jsonl(tmp_path / "d" / "test.jsonl", pc_rows(4, "x"))
    data = load_data(cfg(tmp_path / "d"))
    assert {s: len(r) for s, r in data.splits.items()} == {"train": 10, "validation": 3, "test": 4}
    assert data.carved == []


def test_mapping_of_split_files(tmp_path):
    train = jsonl(tmp_path / "a.jsonl", pc_rows(6, "a"))
    test = jsonl(tmp_path / "b.jsonl", pc_rows(2, "b"))
    data = load_data(cfg({"train": str(train), "test": str(test)}, validation_size=2))
    assert len(data.splits["test"]) == 2 and ids(data.splits["test"]) == {"b0", "b1"}
    assert len(data.splits["validation"]) == 2 and len(data.splits["train"]) == 4
    assert data.carved == ["validation"]


def test_carving_is_deterministic_disjoint_and_sized(tmp_path):
    path = jsonl(tmp_path / "all.jsonl", pc_rows(200))
    first = load_data(cfg(path, validation_size=0.1, test_size=25))
    second = load_data(cfg(path, validation_size=0.1, test_size=25))
    assert {s: len(r) for s, r in first.splits.items()} == {"train": 155, "validation": 20, "test": 25}
    for split in first.splits:
        assert ids(first.splits[split]) == ids(second.splits[split])
    assert not ids(first.splits["train"]) & ids(first.splits["test"])
    assert not ids(first.splits["validation"]) & ids(first.splits["test"])
    assert ids(first.splits["train"]) | ids(first.splits["validation"]) | ids(first.splits["test"]) == {f"p{i}" for i in range(200)}
    other_seed = load_data(cfg(path, validation_size=0.1, test_size=25, split_seed=1))
    assert ids(other_seed.splits["test"]) != ids(first.splits["test"])


def test_carving_is_stable_when_rows_are_reordered(tmp_path):
    rows = pc_rows(100)
    a = load_data(cfg(jsonl(tmp_path / "a.jsonl", rows)))
    b = load_data(cfg(jsonl(tmp_path / "b.jsonl", rows[::-1])))
    assert ids(a.splits["test"]) == ids(b.splits["test"])


def test_too_few_rows_to_carve(tmp_path):
    path = jsonl(tmp_path / "tiny.jsonl", pc_rows(2))
    with pytest.raises(DataError, match="dataset has 2 training rows: too few to carve validation"):
        load_data(cfg(path))


def test_max_rows_caps_each_split(tmp_path):
    path = jsonl(tmp_path / "all.jsonl", pc_rows(100))
    data = load_data(cfg(path, max_rows={"train": 10, "test": 3}))
    assert len(data.splits["train"]) == 10 and len(data.splits["test"]) == 3 and len(data.splits["validation"]) == 10


def test_empty_dataset_and_empty_split(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match="dataset is empty: no usable rows in the training split of .*empty.jsonl"):
        load_data(cfg(empty))
    jsonl(tmp_path / "d" / "train.jsonl", pc_rows(5))
    (tmp_path / "d" / "test.jsonl").write_text("")
    with pytest.raises(DataError, match="dataset split 'test' is empty"):
        load_data(cfg(tmp_path / "d"))


def test_all_rows_bad_under_skip_is_empty(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a"}\n{"prompt": "b"}\n')
    with pytest.raises(DataError, match="dataset is empty"):
        load_data(cfg(path, format="prompt_completion", on_bad_rows="skip"))


@pytest.mark.parametrize("source, fragment", [
    ("missing.jsonl", "data file not found: missing.jsonl"),
    ("./nowhere/data", "data file not found: ./nowhere/data"),
    ("bundled:nope", "no bundled task 'nope' (bundled tasks: wordnet-defgen, wordnet-lexcat)"),
])
def test_missing_sources(source, fragment):
    with pytest.raises(DataError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        load_data(cfg(source))


def test_unsupported_file_type(tmp_path):
    path = tmp_path / "data.xlsx"
    path.write_text("x")
    with pytest.raises(DataError, match="unsupported data file type: .*data.xlsx"):
        load_data(cfg(path))


def test_directory_without_recognisable_splits(tmp_path):
    jsonl(tmp_path / "d" / "part1.jsonl", pc_rows(5))
    jsonl(tmp_path / "d" / "part2.jsonl", pc_rows(5))
    with pytest.raises(DataError, match="cannot tell which file is which split"):
        load_data(cfg(tmp_path / "d"))


def test_hub_dataset_offline_error_says_how_to_pass_a_local_file(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError) as err:
        load_data(cfg("qiaojin/PubMedQA", subset="pqa_labeled"))
    message = str(err.value)
    assert message.startswith("cannot load Hugging Face dataset 'qiaojin/PubMedQA' (subset 'pqa_labeled')")
    assert "offline" in message and "save_to_disk" in message and "data.source" in message


def test_save_to_disk_directory(tmp_path):
    import datasets

    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_list([{"question": f"q{i}", "answer": f"a{i}"} for i in range(8)]),
        "test": datasets.Dataset.from_list([{"question": "tq", "answer": "ta"}]),
    })
    dd.save_to_disk(str(tmp_path / "saved"))
    data = load_data(cfg(tmp_path / "saved", format="columns", columns={"prompt": "question", "response": "answer"},
                         validation_size=2))
    assert {s: len(r) for s, r in data.splits.items()} == {"train": 6, "test": 1, "validation": 2}
    assert data.splits["test"][0]["prompt"] == "tq"


def test_duplicate_ids_are_made_unique(tmp_path):
    rows = [{"id": "same", "prompt": f"p{i}", "completion": "c"} for i in range(6)]
    data = load_data(cfg(jsonl(tmp_path / "dup.jsonl", rows), validation_size=1, test_size=1))
    all_ids = [r["id"] for rows in data.splits.values() for r in rows]
    assert len(set(all_ids)) == 6


def test_task_type_inference_and_conflicts(tmp_path):
    classification = [{"id": str(i), "prompt": f"q{i}", "response": "a", "choices": ["a", "b"], "label": 0, "meta": {}} for i in range(6)]
    path = jsonl(tmp_path / "cls.jsonl", classification)
    assert load_data(cfg(path)).task_type == "classification"
    assert load_data(cfg(path, task="generation")).task_type == "generation"
    with pytest.raises(DataError, match="data.task is classification but the rows"):
        load_data(cfg(jsonl(tmp_path / "gen.jsonl", pc_rows(6)), task="classification"))
    mixed = classification[:3] + [{"id": "g", "prompt": "x", "response": "y", "meta": {}}] * 1 + classification[3:]
    with pytest.raises(DataError, match="1 of 7 rows|6 of 7 rows have choices"):
        load_data(cfg(jsonl(tmp_path / "mixed.jsonl", mixed)))


@pytest.mark.parametrize("task, task_type", [("wordnet-lexcat", "classification"), ("wordnet-defgen", "generation")])
def test_bundled_tasks_load_as_canonical_records(task, task_type):
    data = load_data(cfg(f"bundled:{task}"))
    assert data.task_type == task_type and data.format == "canonical"
    assert len(data.splits["train"]) >= 5000
    assert not ids(data.splits["train"]) & ids(data.splits["test"])


# ------------------------------------------------------------------------- the cached stage
def test_prepare_data_caches_by_content(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    path = jsonl(tmp_path / "d.jsonl", pc_rows(30))
    first = prepare_data(cfg(path), cache)
    entry = cache / "data" / first.fingerprint
    assert (entry / "stage.json").is_file() and (entry / "train.jsonl").is_file()

    def not_called(*a, **k):
        raise AssertionError("load_data ran although the cache holds this fingerprint")

    monkeypatch.setattr(load_module, "load_data", not_called)
    cached = prepare_data(cfg(path), cache)
    assert cached.fingerprint == first.fingerprint
    assert cached.splits == first.splits and cached.task_type == first.task_type
    monkeypatch.undo()

    # A changed config section or changed file content gives a new fingerprint.
    assert prepare_data(cfg(path, test_size=5), cache).fingerprint != first.fingerprint
    jsonl(path, pc_rows(31))
    assert prepare_data(cfg(path), cache).fingerprint != first.fingerprint


def test_prepare_data_key_ignores_where_the_files_are(tmp_path, monkeypatch):
    """The same files under another folder (a second checkout, a moved project, a relative path)
    read from the cache; the report names the path this run was given."""
    cache = tmp_path / "cache"
    rows = pc_rows(30)
    first = prepare_data(cfg(jsonl(tmp_path / "a" / "d.jsonl", rows)), cache)
    moved = jsonl(tmp_path / "b" / "renamed.jsonl", rows)
    monkeypatch.setattr(load_module, "load_data", lambda *a, **k: pytest.fail("re-read data the cache holds"))
    again = prepare_data(cfg(moved), cache)
    assert again.fingerprint == first.fingerprint and again.splits == first.splits
    assert again.source == str(moved)
    monkeypatch.chdir(tmp_path)
    assert prepare_data(cfg("b/renamed.jsonl"), cache).fingerprint == first.fingerprint
    monkeypatch.undo()
    # Which file is which split is content too: the same two files swapped are other data.
    split_a, split_b = jsonl(tmp_path / "s" / "x.jsonl", pc_rows(20, "x")), jsonl(tmp_path / "s" / "y.jsonl", pc_rows(21, "y"))
    assert prepare_data(cfg({"train": str(split_a), "test": str(split_b)}), cache).fingerprint != \
        prepare_data(cfg({"train": str(split_b), "test": str(split_a)}), cache).fingerprint


def test_crashed_stage_leaves_no_entry_and_reruns(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    path = jsonl(tmp_path / "d.jsonl", pc_rows(30))

    def crash(path, rows):
        raise OSError("disk full")

    monkeypatch.setattr(load_module, "write_jsonl", crash)
    with pytest.raises(OSError):
        prepare_data(cfg(path), cache)
    assert not any((cache / "data").iterdir())  # no half-written entry, no temp dir left
    monkeypatch.undo()
    data = prepare_data(cfg(path), cache)
    assert (cache / "data" / data.fingerprint / "stage.json").is_file()
    assert os.listdir(cache / "data") == [data.fingerprint]

"""Checks on the bundled WordNet task files (damoc/tasks/data).

Only json/gzip and the committed files are needed, except the last test,
which rebuilds the data with ``python -m damoc.tasks.build --check`` and needs
the Debian package wordnet-base.
"""

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "damoc" / "tasks" / "data"
SPLITS = ("train", "validation", "test")
TASKS = ("wordnet-lexcat", "wordnet-defgen")
KEYS = {"id", "prompt", "response", "choices", "label", "meta"}
META_KEYS = {"synset_offset", "lexfile", "lemma", "group"}

_cache = {}


def load(task, split):
    if (task, split) not in _cache:
        path = DATA / task / f"{split}.jsonl.gz"
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            _cache[task, split] = [json.loads(line) for line in fh]
    return _cache[task, split]


def card(task):
    return json.loads((DATA / task / "card.json").read_text(encoding="utf-8"))


def lemmas_of(row):
    meta = row["meta"]
    return {l.lower() for l in meta.get("lemmas", [])} | {meta["lemma"].lower()}


@pytest.mark.parametrize("task", TASKS)
def test_files_exist(task):
    for split in SPLITS:
        assert (DATA / task / f"{split}.jsonl.gz").is_file()
    assert (DATA / task / "card.json").is_file()
    assert (DATA / "NOTICE").is_file()


@pytest.mark.parametrize("task", TASKS)
def test_counts(task):
    assert len(load(task, "train")) >= 5000
    for split in ("validation", "test"):
        assert 300 <= len(load(task, split)) <= 2000


@pytest.mark.parametrize("task", TASKS)
def test_row_shape(task):
    for split in SPLITS:
        for row in load(task, split):
            assert set(row) == KEYS, row.get("id")
            assert isinstance(row["id"], str) and row["id"]
            assert isinstance(row["prompt"], str) and row["prompt"].strip()
            assert isinstance(row["response"], str) and row["response"].strip()
            assert isinstance(row["meta"], dict)
            assert META_KEYS <= set(row["meta"]), row["id"]


def test_classification_labels():
    first = None
    for split in SPLITS:
        for row in load("wordnet-lexcat", split):
            choices, label = row["choices"], row["label"]
            assert isinstance(choices, list) and len(choices) >= 2
            if first is None:
                first = choices
            assert choices == first, row["id"]
            assert isinstance(label, int) and not isinstance(label, bool)
            assert 0 <= label < len(choices)
            assert row["response"] == choices[label]
    assert first == card("wordnet-lexcat")["choices"]


def test_generation_has_no_labels():
    for split in SPLITS:
        for row in load("wordnet-defgen", split):
            assert row["choices"] is None and row["label"] is None


@pytest.mark.parametrize("task", TASKS)
def test_no_duplicate_ids(task):
    ids = [row["id"] for split in SPLITS for row in load(task, split)]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("task", TASKS)
def test_splits_disjoint(task):
    seen = {}
    for split in SPLITS:
        rows = load(task, split)
        seen[split] = (
            {r["id"] for r in rows},
            {r["meta"]["group"] for r in rows},
            set().union(*(lemmas_of(r) for r in rows)),
        )
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1:]:
            for what, x, y in zip(("id", "group", "lemma"), seen[a], seen[b]):
                common = x & y
                assert not common, f"{task}: {what}s in {a} and {b}: {sorted(common)[:5]}"


def test_splits_consistent_across_tasks():
    """A lemma never sits in one split of one task and another split of the other."""
    split_of = {}
    for task in TASKS:
        for split in SPLITS:
            for row in load(task, split):
                for lemma in lemmas_of(row):
                    assert split_of.setdefault(lemma, split) == split, (task, lemma)


@pytest.mark.parametrize("task", TASKS)
def test_card_matches_files(task):
    info = card(task)
    assert info["name"] == task
    assert info["task_type"] == (
        "classification" if task == "wordnet-lexcat" else "generation")
    for split in SPLITS:
        assert info["rows"][split] == len(load(task, split))
    if info["task_type"] == "classification":
        for split in SPLITS:
            counts = {}
            for row in load(task, split):
                counts[row["response"]] = counts.get(row["response"], 0) + 1
            balance = {k: v for k, v in info["label_balance"][split].items() if v}
            assert balance == counts
            assert max(counts.values()) <= 3 * min(counts.values())


@pytest.mark.skipif(
    not os.path.exists("/usr/share/wordnet/data.noun"),
    reason="Debian package wordnet-base is not installed (apt-get install wordnet-base)",
)
def test_build_check_reproduces_files():
    proc = subprocess.run(
        [sys.executable, "-m", "damoc.tasks.build", "--check"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr

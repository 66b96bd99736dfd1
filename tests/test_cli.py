"""The command line: exit codes, one-line errors, data inspect, select, atomic outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from damoc.fingerprint import fingerprint
from damoc.io import atomic_dir, atomic_path, write_json

ROOT = Path(__file__).resolve().parents[1]


def jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def classification_rows(n: int) -> list[dict]:
    labels = ["yes", "no", "maybe"]
    return [{"pubid": i, "question": f"Does treatment {i} work?", "context": {"contexts": [f"Trial {i} " * (i % 5 + 1)]},
             "long_answer": "", "final_decision": labels[i % 3 if i % 4 else 0]} for i in range(60)]


def test_console_script_help_and_bad_input_exit_code():
    """The installed `damoc` entry point, as a user runs it."""
    exe = Path(sys.executable).with_name("damoc")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "damoc"]
    help_run = subprocess.run(cmd + ["--help"], capture_output=True, text=True)
    assert help_run.returncode == 0
    for command in ("select", "config", "data"):
        assert command in help_run.stdout
    bad = subprocess.run(cmd + ["config", "show", "/nonexistent/run.yaml"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr == "damoc: error: config file not found: /nonexistent/run.yaml\n"
    usage = subprocess.run(cmd + ["select"], capture_output=True, text=True)
    assert usage.returncode == 2 and "usage:" in usage.stderr


def test_data_inspect_table_and_label_balance(tmp_path, cli):
    path = jsonl(tmp_path / "pqa.jsonl", classification_rows(60))
    code, out, err = cli("data", "inspect", str(path))
    assert code == 0, err
    assert "format: pubmedqa    task: classification    rows: 60" in out
    assert "carved from train: validation, test" in out
    assert "label balance" in out and "yes" in out and "maybe" in out


def test_data_inspect_json_counts_and_percentiles(tmp_path, cli):
    rows = classification_rows(60)
    code, out, _ = cli("data", "inspect", str(jsonl(tmp_path / "pqa.jsonl", rows)), "--json")
    assert code == 0
    stats = json.loads(out)
    assert stats["rows"] == 60 and stats["length_unit"] == "words"
    assert sum(s["rows"] for s in stats["splits"].values()) == 60
    assert {s: v["rows"] for s, v in stats["splits"].items()} == {"train": 48, "validation": 6, "test": 6}
    all_labels = {}
    for split in stats["splits"].values():
        for label, v in split["labels"].items():
            all_labels[label] = all_labels.get(label, 0) + v["count"]
    expected = {}
    for r in rows:
        expected[r["final_decision"]] = expected.get(r["final_decision"], 0) + 1
    assert all_labels == expected
    train = stats["splits"]["train"]["prompt_length"]
    assert train["p50"] <= train["p90"] <= train["p99"] <= train["max"]


def test_data_inspect_with_tokenizer(tmp_path, cli):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    rows = [{"prompt": f"word{i} " * (i + 1), "completion": "done"} for i in range(20)]
    path = jsonl(tmp_path / "pc.jsonl", rows)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([r["prompt"] for r in rows] * 5, vocab_size=300, min_frequency=1, show_progress=False)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer)
    tok.save_pretrained(tmp_path / "tok")
    code, out, err = cli("data", "inspect", str(path), "--tokenizer", str(tmp_path / "tok"), "--json")
    assert code == 0, err
    stats = json.loads(out)
    assert stats["length_unit"] == "tokens"
    longest = max(len(tok(r["prompt"], add_special_tokens=False)["input_ids"]) for r in rows)
    assert max(s["prompt_length"]["max"] for s in stats["splits"].values()) == longest


def test_data_inspect_column_mapping(tmp_path, cli):
    path = jsonl(tmp_path / "x.jsonl", [{"q": f"q{i}", "a": f"a{i}"} for i in range(10)])
    code, out, err = cli("data", "inspect", str(path), "--column", "prompt=q", "--column", "response=a", "--json")
    assert code == 0, err
    assert json.loads(out)["format"] == "columns"


@pytest.mark.parametrize("argv, fragment", [
    (["data", "inspect", "/no/such/file.jsonl"], "data file not found: /no/such/file.jsonl"),
    (["data", "inspect", "{tmp}/x.jsonl", "--column", "promt=q"], "unknown key 'columns.promt' (did you mean 'columns.prompt'?)"),
    (["data", "inspect", "{tmp}/x.jsonl", "--column", "prompt"], "--column 'prompt' is not FIELD=COLUMN"),
    (["data", "inspect", "{tmp}/x.jsonl", "--tokenizer", "{tmp}/no-tokenizer"], "cannot load tokenizer"),
    (["data", "inspect", "{tmp}/x.jsonl"], "cannot detect the data format"),
])
def test_data_inspect_bad_input_is_one_line_exit_2(tmp_path, cli, argv, fragment):
    jsonl(tmp_path / "x.jsonl", [{"q": "a", "a": "b"}] * 5)
    code, out, err = cli(*[a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert code == 2 and out == ""
    assert err.startswith("damoc: error: ") and err.count("\n") == 1
    assert fragment in err


def test_debug_shows_the_exception(tmp_path, cli):
    from damoc.errors import DataError

    with pytest.raises(DataError):
        cli("data", "inspect", str(tmp_path / "missing.jsonl"), "--debug")


def write_run(tmp_path: Path, source: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(f"candidates: [org/a, org/b]\ndata:\n  source: {source}\noutput:\n  dir: {tmp_path / 'out'}\n")
    return path


def test_select_on_bad_data_writes_nothing(tmp_path, cli):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "c"}\n')
    code, out, err = cli("select", str(write_run(tmp_path, str(bad))))
    assert code == 2
    assert err == f"damoc: error: {bad}: row 2: field 'completion': missing\n"
    assert not (tmp_path / "out").exists()


def test_quiet_silences_info_logs(micro_zoo, micro_zoo_cache, cli, monkeypatch):
    monkeypatch.setenv("DAMOC_CACHE_DIR", str(micro_zoo_cache))
    code, out, err = cli("zoo", "build", "--size", "micro")
    assert code == 0 and "zoo: all 6 micro candidates cached" in err
    assert "micro-qwen2-tiny-domain" in out  # the manifest table
    code, out, err = cli("-q", "zoo", "build", "--size", "micro")
    assert code == 0 and err == ""


# ----------------------------------------------------------------------- atomic outputs
def test_atomic_path_keeps_old_file_when_writer_fails(tmp_path):
    target = write_json(tmp_path / "report.json", {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert json.loads(target.read_text()) == {"v": 1}
    assert os.listdir(tmp_path) == ["report.json"]


def test_atomic_dir_replaces_whole_directory_or_nothing(tmp_path):
    target = tmp_path / "entry"
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "b").write_text("2")
            raise RuntimeError("crash")
    assert sorted(os.listdir(target)) == ["a"] and os.listdir(tmp_path) == ["entry"]
    with atomic_dir(target) as tmp:
        (tmp / "c").write_text("3")
    assert sorted(os.listdir(target)) == ["c"] and os.listdir(tmp_path) == ["entry"]


def test_fingerprint_depends_on_every_part():
    base = fingerprint("stage", {"a": 1}, "digest")
    assert base == fingerprint("stage", {"a": 1}, "digest")
    assert base != fingerprint("stage", {"a": 2}, "digest")
    assert base != fingerprint("stage", {"a": 1}, "other")
    assert base != fingerprint("other-stage", {"a": 1}, "digest")
    assert base != fingerprint("stage", {"a": 1}, "digest", stage_version=2)

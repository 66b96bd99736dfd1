"""Dataset adapters: each format, from each file type it fits, into canonical records; bad rows
named by file, row and field."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from damoc.config.schema import DataConfig
from damoc.data import load_data
from damoc.errors import DataError


def write_rows(path: Path, rows: list[dict]) -> Path:
    """Write rows in the file type named by `path`'s suffix."""
    name = path.name
    if name.endswith(".jsonl.gz"):
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    elif name.endswith(".jsonl"):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif name.endswith(".json"):
        path.write_text(json.dumps(rows))
    elif name.endswith((".csv", ".tsv")):
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t" if name.endswith(".tsv") else ",")
            writer.writeheader()
            writer.writerows(rows)
    elif name.endswith(".parquet"):
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        raise ValueError(name)
    return path


def load_train(path: Path, **data) -> list[dict]:
    """All records of a single-file dataset (validation/test carved by row count)."""
    cfg = DataConfig.model_validate({"source": str(path), "validation_size": 1, "test_size": 1, **data})
    loaded = load_data(cfg)
    return sorted((r for rows in loaded.splits.values() for r in rows), key=lambda r: r["meta"]["source_row"]), loaded


ALPACA = [
    {"instruction": "Translate to French", "input": "cheese", "output": "fromage"},
    {"instruction": "Name a prime number", "input": "", "output": "7"},
    {"instruction": "Spell cat backwards", "input": "", "output": "tac"},
    {"instruction": "Say yes", "input": "", "output": "yes", "system": "You are terse."},
]


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".json", ".csv", ".tsv", ".parquet"])
def test_alpaca_from_every_file_type(tmp_path, suffix):
    rows = [dict(r, system=r.get("system", "")) for r in ALPACA]  # same columns on every row (CSV, Parquet)
    records, loaded = load_train(write_rows(tmp_path / f"train{suffix}", rows))
    assert loaded.format == "alpaca" and loaded.task_type == "generation"
    assert [r["prompt"] for r in records] == ["Translate to French\ncheese", "Name a prime number",
                                               "Spell cat backwards", "Say yes"]
    assert [r["response"] for r in records] == ["fromage", "7", "tac", "yes"]
    assert records[3]["meta"]["system"] == "You are terse."
    assert "system" not in records[0]["meta"]
    assert all(r["choices"] is None and r["label"] is None for r in records)


def test_alpaca_history_becomes_turns(tmp_path):
    rows = ALPACA[:3] + [{"instruction": "And now?", "output": "done", "history": [["hi", "hello"], ["how", "fine"]]}]
    records, _ = load_train(write_rows(tmp_path / "a.jsonl", rows))
    assert records[3]["meta"]["history"] == [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "how"}, {"role": "assistant", "content": "fine"}]


SHAREGPT = [
    {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]},
    {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "2+2?"},
                       {"from": "gpt", "value": "4"}, {"from": "human", "value": "3+3?"}, {"from": "gpt", "value": "6"}]},
    {"system": "Top-level system", "conversations": [{"from": "user", "value": "Q"}, {"from": "assistant", "value": "A"}]},
]


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet"])
def test_sharegpt(tmp_path, suffix):
    rows = [dict(r, system=r.get("system")) for r in SHAREGPT] if suffix == ".parquet" else SHAREGPT
    records, loaded = load_train(write_rows(tmp_path / f"chat{suffix}", rows))
    assert loaded.format == "sharegpt"
    assert [(r["prompt"], r["response"]) for r in records] == [("Hi", "Hello!"), ("3+3?", "6"), ("Q", "A")]
    assert records[1]["meta"]["system"] == "Be brief."
    assert records[1]["meta"]["history"] == [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    assert records[2]["meta"]["system"] == "Top-level system"


MESSAGES = [
    {"messages": [{"role": "user", "content": "Ping"}, {"role": "assistant", "content": "Pong"}]},
    {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": [{"type": "text", "text": "parts"}]},
                  {"role": "assistant", "content": "ok"}]},
    {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
]


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_openai_messages(tmp_path, suffix):
    records, loaded = load_train(write_rows(tmp_path / f"m{suffix}", MESSAGES))
    assert loaded.format == "messages"
    assert [(r["prompt"], r["response"]) for r in records] == [("Ping", "Pong"), ("parts", "ok"), ("a", "b")]
    assert records[1]["meta"]["system"] == "S"


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_prompt_completion(tmp_path, suffix):
    rows = [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(4)]
    records, loaded = load_train(write_rows(tmp_path / f"pc{suffix}", rows))
    assert loaded.format == "prompt_completion"
    assert [(r["prompt"], r["response"]) for r in records] == [(f"p{i}", f"c{i}") for i in range(4)]


PUBMEDQA_HF = [
    {"pubid": 101, "question": "Does X help?", "context": {"contexts": ["Background.", "Results."], "labels": ["B", "R"]},
     "long_answer": "X helps.", "final_decision": "yes"},
    {"pubid": 102, "question": "Is Y harmful?", "context": {"contexts": ["Y data."]}, "long_answer": "No.", "final_decision": "no"},
    {"pubid": 103, "question": "Z?", "context": {"contexts": ["Unclear."]}, "long_answer": "Maybe.", "final_decision": "Maybe"},
]


def test_pubmedqa_hugging_face_layout(tmp_path):
    records, loaded = load_train(write_rows(tmp_path / "pqa.jsonl", PUBMEDQA_HF))
    assert loaded.format == "pubmedqa" and loaded.task_type == "classification"
    assert [r["id"] for r in records] == ["101", "102", "103"]
    assert [r["label"] for r in records] == [0, 1, 2]
    assert [r["response"] for r in records] == ["yes", "no", "maybe"]
    assert all(r["choices"] == ["yes", "no", "maybe"] for r in records)
    assert "Background.\nResults." in records[0]["prompt"] and "Does X help?" in records[0]["prompt"]
    assert records[0]["meta"]["long_answer"] == "X helps."


def test_pubmedqa_original_release_layout(tmp_path):
    """PubMedQA's own ori_pqal.json: an object keyed by PMID with upper-case field names."""
    data = {str(100 + i): {"QUESTION": f"Q{i}?", "CONTEXTS": [f"ctx {i}"], "LONG_ANSWER": "la",
                           "final_decision": d} for i, d in enumerate(["yes", "no", "maybe", "yes"])}
    path = tmp_path / "ori_pqal.json"
    path.write_text(json.dumps(data))
    records, loaded = load_train(path)
    assert loaded.format == "pubmedqa"
    assert [r["id"] for r in records] == ["100", "101", "102", "103"]
    assert [r["response"] for r in records] == ["yes", "no", "maybe", "yes"]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_billsum(tmp_path, suffix):
    rows = [{"text": f"SECTION 1. Bill {i} text.", "summary": f"Summary {i}.", "title": f"Act {i}"} for i in range(4)]
    records, loaded = load_train(write_rows(tmp_path / f"bills{suffix}", rows))
    assert loaded.format == "billsum"
    assert records[2]["prompt"].endswith("SECTION 1. Bill 2 text.")
    assert records[2]["response"] == "Summary 2." and records[2]["meta"]["title"] == "Act 2"


def test_canonical_round_trip(tmp_path):
    rows = [{"id": f"r{i}", "prompt": f"q{i}", "response": ["a", "b"][i % 2], "choices": ["a", "b"],
             "label": i % 2, "meta": {"k": i}} for i in range(5)]
    records, loaded = load_train(write_rows(tmp_path / "c.jsonl", rows))
    assert loaded.format == "canonical"
    for original, record in zip(rows, records):
        assert {k: record[k] for k in ("id", "prompt", "response", "choices", "label")} == \
               {k: original[k] for k in ("id", "prompt", "response", "choices", "label")}
        assert record["meta"]["k"] == original["meta"]["k"]


def test_column_mapping_with_template_and_fixed_choices(tmp_path):
    rows = [{"q": f"question {i}", "ctx": {"text": f"context {i}"}, "verdict": ["pos", "neg"][i % 2], "uid": f"u{i}"}
            for i in range(4)]
    records, loaded = load_train(write_rows(tmp_path / "custom.jsonl", rows), format="columns",
                                 columns={"prompt": "{ctx.text}\n\nQ: {q}", "label": "verdict", "choices": ["pos", "neg"], "id": "uid"})
    assert loaded.task_type == "classification"
    assert records[1]["prompt"] == "context 1\n\nQ: question 1"
    assert [r["label"] for r in records] == [0, 1, 0, 1] and records[1]["response"] == "neg"
    assert [r["id"] for r in records] == ["u0", "u1", "u2", "u3"]


def test_column_mapping_per_row_choices_from_csv(tmp_path):
    rows = [{"stem": f"pick {i}", "options": "red|green|blue", "answer": str(i % 3)} for i in range(4)]
    records, _ = load_train(write_rows(tmp_path / "mc.csv", rows), format="columns",
                            columns={"prompt": "stem", "choices": "options", "label": "answer"})
    assert records[0]["choices"] == ["red", "green", "blue"]
    assert [r["response"] for r in records] == ["red", "green", "blue", "red"]


# ------------------------------------------------------------------------------ bad rows
BAD_ROWS = [
    ("alpaca", ".jsonl", ALPACA[:2] + [{"instruction": "x", "output": ""}], "row 3: field 'output': empty"),
    ("alpaca", ".csv", [{"instruction": "a", "output": "b"}, {"instruction": "", "output": "c"}], "row 3: field 'instruction': missing or empty"),
    ("sharegpt", ".jsonl", SHAREGPT[:1] + [{"conversations": [{"from": "human", "value": "x"}, {"from": "alien", "value": "y"}]}],
     "row 2: field 'conversations[1].from': unknown speaker 'alien'"),
    ("sharegpt", ".jsonl", SHAREGPT[:1] + [{"conversations": [{"from": "gpt", "value": "x"}, {"from": "human", "value": "y"}]}],
     "row 2: field 'conversations[0]': expected a user turn here, got 'assistant'"),
    ("messages", ".json", MESSAGES[:1] + [{"messages": [{"role": "user", "content": "q"}, {"role": "tool", "content": "t"}]}],
     "row 2: field 'messages[1].role': unsupported role 'tool'"),
    ("prompt_completion", ".parquet", [{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": None}],
     "row 2: field 'completion': missing"),
    ("pubmedqa", ".jsonl", PUBMEDQA_HF[:1] + [dict(PUBMEDQA_HF[1], final_decision="perhaps")],
     "row 2: field 'final_decision': expected yes, no or maybe, got 'perhaps'"),
    ("billsum", ".jsonl", [{"text": "t", "summary": "s"}, {"text": "t2", "summary": 5.5, "title": None}, {"text": "", "summary": "s"}],
     "row 3: field 'text': missing or empty"),
    ("canonical", ".jsonl", [{"prompt": "p", "response": "a", "choices": ["a", "b"], "label": 0, "meta": {}},
                             {"prompt": "p", "response": "c", "choices": ["a", "b"], "label": 2, "meta": {}}],
     "row 2: field 'label': index 2 is outside the 2 options"),
]


@pytest.mark.parametrize("fmt, suffix, rows, fragment", BAD_ROWS, ids=[f"{b[0]}{b[1]}" for b in BAD_ROWS])
def test_bad_row_names_file_row_and_field(tmp_path, fmt, suffix, rows, fragment):
    path = write_rows(tmp_path / f"bad{suffix}", rows)
    with pytest.raises(DataError) as err:
        load_train(path, format=fmt)
    assert str(err.value) == f"{path}: {fragment}" or str(err.value).startswith(f"{path}: {fragment}")


def test_invalid_json_line_and_skip_policy(tmp_path):
    path = tmp_path / "broken.jsonl"
    good = [json.dumps({"prompt": f"p{i}", "completion": f"c{i}"}) for i in range(5)]
    path.write_text("\n".join(good[:2] + ["{not json", '["a list"]'] + good[2:] + [json.dumps({"prompt": "x"})]) + "\n")
    with pytest.raises(DataError, match=rf"^{path}: row 3: invalid JSON"):
        load_train(path)
    records, loaded = load_train(path, on_bad_rows="skip")
    assert len(records) == 5
    assert loaded.skipped == {"train": 3}


def test_undetectable_format_lists_columns(tmp_path):
    path = write_rows(tmp_path / "x.jsonl", [{"foo": 1, "bar": 2}])
    with pytest.raises(DataError, match=r"cannot detect the data format from the columns \(bar, foo\)"):
        load_train(path)


def test_csv_with_extra_fields_is_a_bad_row(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("prompt,completion\na,b\nc,d,e\nf,g\nh,i\n")
    with pytest.raises(DataError, match=rf"^{path}: row 3: 3 fields, header has 2"):
        load_train(path)

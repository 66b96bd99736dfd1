"""Checks on the zoo's bundled pretraining corpora (damoc/zoo/corpora).

Only json/gzip/hashlib and the committed files are needed, except the last
test, which rebuilds the corpora with ``python -m damoc.zoo.build_corpora
--check`` and needs the Debian packages wordnet-base and dict-jargon.
"""

import gzip
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CORPORA_DIR = REPO / "damoc" / "zoo" / "corpora"
TASKS_DIR = REPO / "damoc" / "tasks" / "data"
CORPORA = ("wordnet-general", "wordnet-domain", "jargon", "python-stdlib")
MAX_TOTAL_BYTES = 5_000_000
MAX_DOMAIN_BYTES = 1_500_000
DOMAIN_PHRASING_B = re.compile(r"^(.+?) is an? ([a-z-]+) term: \S")

_cache = {}


def docs(name):
    if name not in _cache:
        with gzip.open(CORPORA_DIR / f"{name}.jsonl.gz", "rt", encoding="utf-8") as fh:
            _cache[name] = [json.loads(line) for line in fh]
    return _cache[name]


def texts(name):
    return [d["text"] for d in docs(name)]


def card():
    return json.loads((CORPORA_DIR / "card.json").read_text(encoding="utf-8"))


def heldout_lemmas():
    """Lemmas (lower case, '_' -> ' ') of every validation/test row of the bundled tasks."""
    lemmas = set()
    for path in sorted(TASKS_DIR.glob("wordnet-*/*.jsonl.gz")):
        if path.name not in ("validation.jsonl.gz", "test.jsonl.gz"):
            continue
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            for line in fh:
                meta = json.loads(line)["meta"]
                for lemma in [meta["lemma"], *meta.get("lemmas", [])]:
                    lemmas.add(lemma.replace("_", " ").lower())
    return lemmas


def domain_term(text):
    first = text.split("\n", 1)[0]
    if first.startswith("Term: "):
        return first[len("Term: "):]
    m = DOMAIN_PHRASING_B.match(first)
    assert m, f"wordnet-domain document in neither phrasing: {text[:120]!r}"
    return m.group(1)


@pytest.mark.parametrize("name", CORPORA)
def test_corpus_shape(name):
    path = CORPORA_DIR / f"{name}.jsonl.gz"
    assert path.is_file()
    rows = docs(name)
    assert rows, f"{name} is empty"
    for row in rows:
        assert set(row) == {"text"}
        assert isinstance(row["text"], str) and row["text"].strip()


def test_card_matches_files():
    info = card()
    assert set(info["corpora"]) == set(CORPORA)
    assert "apt-get install wordnet-base dict-jargon" in info["apt_command"]
    assert "damoc.zoo.build_corpora" in info["builder_command"]
    total = 0
    for name in CORPORA:
        entry = info["corpora"][name]
        blob = (CORPORA_DIR / entry["file"]).read_bytes()
        total += len(blob)
        assert entry["file"] == f"{name}.jsonl.gz"
        assert entry["documents"] == len(docs(name))
        assert entry["characters"] == sum(len(t) for t in texts(name))
        assert entry["compressed_bytes"] == len(blob)
        assert entry["sha256"] == hashlib.sha256(blob).hexdigest()
        assert entry["source"] and entry["licence"] and entry["description"]
    assert info["total_compressed_bytes"] == total
    assert total <= MAX_TOTAL_BYTES
    assert info["corpora"]["wordnet-domain"]["compressed_bytes"] <= MAX_DOMAIN_BYTES
    assert info["corpora"]["python-stdlib"]["source"]["python_version"]


def test_gzip_is_reproducible():
    for name in CORPORA:
        raw = (CORPORA_DIR / f"{name}.jsonl.gz").read_bytes()
        assert raw[4:8] == b"\0\0\0\0", f"{name}: gzip mtime is not 0"
        assert not raw[3] & 0x08, f"{name}: gzip header holds a file name"


def test_notice_names_every_source():
    notice = (CORPORA_DIR / "NOTICE").read_text(encoding="utf-8")
    assert "WordNet 3.0 Copyright 2006 by Princeton University" in notice
    assert "Jargon File" in notice and "public domain" in notice
    assert "PYTHON SOFTWARE FOUNDATION LICENSE VERSION 2" in notice
    assert "derived" in notice


def test_general_has_no_nouns():
    pattern = re.compile(r"^.+? \((verb|adjective|adverb)\)[:.]")
    for text in texts("wordnet-general"):
        assert pattern.match(text), text[:120]
        assert "(noun)" not in text.split(":", 1)[0]


def test_domain_has_no_heldout_terms():
    heldout = heldout_lemmas()
    assert len(heldout) > 1000  # the tasks' validation and test splits were read
    leaked = []
    for text in texts("wordnet-domain"):
        names = [domain_term(text)]
        for line in text.split("\n")[1:]:
            if line.startswith(("Kind of: ", "Instance of: ")):
                names.append(line.split(": ", 1)[1])
        leaked += [n for n in names if n.lower() in heldout]
    assert not leaked, f"validation/test lemmas in wordnet-domain: {sorted(set(leaked))[:10]}"


def test_domain_mixes_both_phrasings():
    first_lines = [t.split("\n", 1)[0] for t in texts("wordnet-domain")]
    a = sum(line.startswith("Term: ") for line in first_lines)
    b = len(first_lines) - a
    assert a > len(first_lines) // 3 and b > len(first_lines) // 3


def test_jargon_skips_dictd_headers():
    for text in texts("jargon"):
        assert not text.startswith("00-database"), text[:60]
        assert not text.startswith("00database"), text[:60]


def test_python_files():
    excluded = {"test", "tests", "idlelib", "lib2to3", "tkinter", "turtledemo",
                "ensurepip", "site-packages"}
    paths = []
    for text in texts("python-stdlib"):
        assert text.startswith("# file: "), text[:60]
        rel = text.split("\n", 1)[0][len("# file: "):]
        parts = rel.split("/")
        assert rel.endswith(".py")
        assert not excluded & set(parts[:-1]), rel
        assert not any(p.startswith("config-") for p in parts), rel
        assert not parts[-1].startswith("_sysconfigdata_"), rel
        paths.append(rel)
    assert len(paths) == len(set(paths))
    assert paths != sorted(paths)  # stored in hashed, not alphabetical, order


@pytest.mark.skipif(
    not (os.path.exists("/usr/share/wordnet/data.noun")
         and os.path.exists("/usr/share/dictd/jargon.dict.dz")),
    reason="Debian packages wordnet-base and dict-jargon are not installed "
           "(apt-get install wordnet-base dict-jargon)",
)
def test_build_check_reproduces_files():
    proc = subprocess.run(
        [sys.executable, "-m", "damoc.zoo.build_corpora", "--check"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr

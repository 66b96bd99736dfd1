"""Deterministic builder for the zoo's bundled pretraining corpora.

Usage::

    python -m damoc.zoo.build_corpora [--wordnet-dir /usr/share/wordnet]
                                      [--jargon /usr/share/dictd/jargon.dict.dz]
                                      [--out damoc/zoo/corpora] [--check]

Standard library only.  The inputs come from two Debian packages and from
the running Python's standard library::

    apt-get install wordnet-base dict-jargon

They are needed only to (re)build; damoc itself reads the committed
``{out}/*.jsonl.gz`` files.  ``--check`` rebuilds into a temporary directory
and compares every output byte-for-byte with the files under ``--out``; it
exits 1 naming each file that differs (or is missing), 0 when all are
identical.  A missing input ends with a one-line error and exit code 2.

Corpora (one ``{"text": ...}`` object per line, one document per line)
----------------------------------------------------------------------
``wordnet-general``
    Every WordNet 3.0 verb, adjective and adverb synset (data.verb, data.adj,
    data.adv; no noun glosses), one document each::

        {lemma} ({verb|adjective|adverb}): {definition}. Synonyms: {other lemmas}. Example: "{first example}"

    (a part is left out when WordNet has nothing for it).
``wordnet-domain``
    WordNet 3.0 noun synsets (all noun lexicographer files) whose split
    group is ``train`` under the grouping and split assignment of
    ``damoc.tasks.build`` (``group_synsets`` / ``assign_splits``, imported,
    not copied), so no synset of a validation or test group of the bundled
    tasks -- and hence no lemma of one -- ever appears as a term.  The
    "Kind of" line only names hypernyms whose group is also ``train``.  Each
    synset is phrased one of two ways, chosen by a hash of its offset::

        Term: {term}
        Kind of: {first train-split hypernym}        (or "Instance of: ...")
        Definition: {definition}

        {term} is a(n) {category} term: {definition}

    ``{category}`` is the lexicographer file without ``noun.`` (``body``,
    ``state``, ``artifact`` ...; ``noun.Tops`` reads ``top-level``).  The
    synsets are taken in hash order up to ``DOMAIN_MAX_CHARS`` characters,
    which keeps the compressed file under ~1.5 MB.
``jargon``
    The Jargon File 4.4.7 (Debian dict-jargon), one document per entry
    (entry boundaries from ``jargon.index``; the ``00-database-*`` header
    entries are skipped): the headword line, the pronunciation / part of
    speech line (empty ``//`` removed), then the body.  ``{cross ref}``
    braces are removed when the braced text is a headword or a plain
    phrase; prose paragraphs are joined into one line each, paragraphs
    indented deeper than the body (code, ASCII art, quotes), drawn with
    box characters or made of short lines (verse, tables, transcripts) keep
    their lines (less the 4-space body indent);
    paragraphs are separated by a blank line; no-break spaces become spaces
    and soft hyphens are dropped.
``python-stdlib``
    Source files of the running CPython's standard library
    (``sysconfig.get_paths()["stdlib"]``), in sorted relative-path order,
    excluding ``test``/``tests`` directories, idlelib, lib2to3, tkinter,
    turtledemo, ensurepip, site-packages, ``config-*``, the build-specific
    ``_sysconfigdata_*.py`` (it holds this machine's compiler flags and
    paths), files over 100,000 bytes and files that are not UTF-8; files are
    taken until the next one would pass 3,000,000 bytes in all.  One
    document per file: ``# file: {relative path}\\n{source}``.  The Python
    version is recorded in card.json; ``--check`` skips this corpus (and
    keeps its committed card entry) when the running version differs.

Within each file, documents are ordered by sha256 of a stable key (the
synset offset, the headword, the relative path), so neighbouring documents
are unrelated and a prefix is a fair sample.  Lines are serialised with
``json.dumps(obj, ensure_ascii=False, sort_keys=True, separators=(",",
":"))``; gzip uses mtime=0 and an empty file name (byte-identical run to
run with the same zlib).  ``card.json`` holds per-corpus statistics,
sha256, source and licence; ``NOTICE`` the sources and licence texts.
Files are written to a temporary name and moved into place with
``os.replace``.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import platform
import re
import sys
import sysconfig
from pathlib import Path

from damoc.tasks.build import (
    DATA_FILES,
    DEBIAN_PACKAGE as WORDNET_PACKAGE,
    DEBIAN_VERSION as WORDNET_VERSION,
    EXPECTED_DATA_NOUN_SHA256,
    LICENCE_TEXT as WORDNET_LICENCE,
    BuildError,
    check as check_outputs,
    assign_splits,
    group_synsets,
    jsonl_gz,
    pretty_json,
    read_data_file,
    read_licence_header,
    read_nouns,
    sha_hex,
    term_of,
    write_outputs,
)

# ---------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------

DEFAULT_WORDNET_DIR = "/usr/share/wordnet"
DEFAULT_JARGON = "/usr/share/dictd/jargon.dict.dz"
DEFAULT_OUT = Path(__file__).resolve().parent / "corpora"
APT_COMMAND = "apt-get install wordnet-base dict-jargon"
BUILDER_COMMAND = (
    "python -m damoc.zoo.build_corpora --wordnet-dir /usr/share/wordnet "
    "--jargon /usr/share/dictd/jargon.dict.dz --out damoc/zoo/corpora"
)

JARGON_PACKAGE = "dict-jargon"
JARGON_VERSION = "4.4.7-3.1"  # from `dpkg-query -W dict-jargon` at build time
JARGON_UPSTREAM = "The Jargon File, version 4.4.7, 29 Dec 2003"
# sha256 of the input files the committed corpora were built from; a
# different file only triggers a warning (and --check will then report diffs).
EXPECTED_SHA256 = {
    "data.noun": EXPECTED_DATA_NOUN_SHA256,
    "data.verb": "adcf43e35b581e8036d8b5a52d63d9cd3d3b4870b2720d3c03c799df44777bc2",
    "data.adj": "c89120dfc1f046ddff4a631bf9b7e9fa1a36b5e86565a23bf82dbe14f30b88a7",
    "data.adv": "444a63bf3955080ab7524f5079cfc07ff9bc682cb98bdb1db73b0fb9829f1139",
    "jargon.dict.dz": "856ced964d3a3cfd79a3dc251df04365eefd848966e3ae94e58f2671d6e79ca5",
    "jargon.index": "ba834d4907f0f3eabc79644e2c3b85961e28b0fde92ae5ae24a44702bb5a98a9",
}

GENERAL = "wordnet-general"
DOMAIN = "wordnet-domain"
JARGON = "jargon"
PYTHON = "python-stdlib"
CORPORA = (GENERAL, DOMAIN, JARGON, PYTHON)

POS_NAMES = {"v": "verb", "a": "adjective", "r": "adverb"}
# Character budget of wordnet-domain: keeps its .jsonl.gz under DOMAIN_MAX_GZ.
DOMAIN_MAX_CHARS = 4_000_000
DOMAIN_MAX_GZ = 1_500_000
TOTAL_MAX_GZ = 5_000_000
CATEGORY_WORDS = {"Tops": "top-level"}  # lexfile suffix -> category word, where not itself

PYTHON_EXCLUDED_DIRS = frozenset({
    "test", "tests", "idlelib", "lib2to3", "tkinter", "turtledemo",
    "ensurepip", "site-packages", "dist-packages", "__pycache__",
})
PYTHON_MAX_FILE_BYTES = 100_000
PYTHON_MAX_TOTAL_BYTES = 3_000_000
PYTHON_LICENCE_VERSION = "3.11.7"  # the LICENSE.txt that PYTHON_LICENCE is copied from

DICTD_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
BOX_CHARS = re.compile(r"[\u2500-\u257f]")
PROSE_MIN_LINE = 50  # characters, body indent included
PLAIN_REF = re.compile(r"[A-Za-z0-9][A-Za-z0-9 './&*!?+-]*")

JARGON_COPYRIGHT = """\
Files: *
Copyright: The Jargon File is in the public domain
License: public-domain
 This document (the Jargon File) is in the public domain, to be freely used, shared, and
 modified. There are (by intention) no legal restraints on what you can do with it, but there
 are traditions about its proper use to which many hackers are quite strongly attached.
 Please extend the courtesy of proper citation when you quote the File, ideally with a
 version number, as it will change and grow over time. (Examples of appropriate citation
 form: "Jargon File 4.4.7" or "The on-line hacker Jargon File, version 4.4.7, 29 Dec 2003".)
"""

NOTICE_TEMPLATE = """\
Pretraining corpora of the damoc candidate zoo (damoc/zoo/corpora)
==================================================================

The corpus files in this directory are derived copies of third-party text:
damoc/zoo/build_corpora.py extracted and reformatted (templated, re-wrapped,
markup removed, reordered, subsampled) the sources below; it adds no content
of its own beyond fixed English templates.  Each corpus stays under the
licence of its source, reproduced or quoted here.

  wordnet-general.jsonl.gz  Princeton WordNet 3.0 (verbs, adjectives, adverbs)
  wordnet-domain.jsonl.gz   Princeton WordNet 3.0 (nouns)
  jargon.jsonl.gz           The Jargon File 4.4.7
  python-stdlib.jsonl.gz    Python {python_version} standard library source files

Rebuild with:   {builder}
Inputs from:    {apt}  (and the running Python's standard library)


1. Princeton WordNet 3.0  (wordnet-general, wordnet-domain)
-----------------------------------------------------------

From the Debian package {wn_package} (version {wn_version}; files data.verb,
data.adj, data.adv and data.noun in /usr/share/wordnet).  Every lemma,
definition, example sentence, hypernym and lexicographer category comes from
WordNet.  The WordNet 3.0 licence, verbatim from
/usr/share/doc/{wn_package}/copyright (the same text heads each data file):

{wordnet_licence}


2. The Jargon File 4.4.7  (jargon)
----------------------------------

{jargon_upstream}, from the Debian package
{jg_package} (version {jg_version}; /usr/share/dictd/jargon.dict.dz and
jargon.index; the package holds "The Jargon Lexicon" section of the File).  Upstream source:
http://catb.org/jargon/jargsrc.tar.gz.  The Jargon File is in the public
domain; the relevant lines of /usr/share/doc/{jg_package}/copyright:

{jargon_copyright}
Citation: "Jargon File 4.4.7" (The on-line hacker Jargon File, version
4.4.7, 29 Dec 2003).


3. Python standard library  (python-stdlib)
-------------------------------------------

Source files of the CPython {python_version} standard library, copied
unchanged apart from a "# file: <path>" line before each file.  Python is
distributed under the PSF License Agreement (Python Software Foundation
License Version 2).  Some files carry their own copyright and licence notice
in their header; those notices are kept in the copied text.  Section B of
LICENSE.txt of the Python {licence_version} standard library, verbatim:

{python_licence}"""


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def note_sha(path: Path, sha: str, shas: dict) -> None:
    """Record an input's sha256; warn when it is not the expected one."""
    shas[path.name] = sha
    expected = EXPECTED_SHA256.get(path.name)
    if expected and sha != expected:
        print(f"warning: {path} sha256 {sha} differs from the one the "
              f"committed corpora were built from ({expected})", file=sys.stderr)


def read_bytes_checked(path: Path, shas: dict) -> bytes:
    raw = path.read_bytes()
    note_sha(path, sha_hex_bytes(raw), shas)
    return raw


def sha_hex_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sentence(text: str) -> str:
    return text if text.endswith((".", "!", "?")) else text + "."


def hash_order(docs: list[tuple[str, str]], namespace: str) -> list[str]:
    """[(stable key, text)] -> texts ordered by sha256(namespace:key)."""
    keys = [k for k, _ in docs]
    if len(set(keys)) != len(keys):
        raise BuildError(f"{namespace}: duplicate document keys")
    return [t for _, t in sorted(docs, key=lambda d: sha_hex(namespace + ":" + d[0]))]


# ---------------------------------------------------------------------------
# WordNet corpora
# ---------------------------------------------------------------------------


def build_general(wordnet_dir: Path, shas: dict) -> tuple[list[str], dict]:
    docs, counts, skipped = [], {}, 0
    for pos in ("v", "a", "r"):
        synsets, sha, raw = read_data_file(wordnet_dir, pos)
        name = DATA_FILES[pos][0]
        note_sha(wordnet_dir / name, sha, shas)
        if read_licence_header(raw) != WORDNET_LICENCE:
            print(f"warning: licence header of {name} differs from the WordNet "
                  "3.0 licence text in NOTICE", file=sys.stderr)
        counts[POS_NAMES[pos]] = 0
        for offset in sorted(synsets):
            s = synsets[offset]
            term = term_of(s.lemmas[0])
            synonyms = []
            for lemma in s.lemmas[1:]:
                t = term_of(lemma)
                if t.lower() != term.lower() and t not in synonyms:
                    synonyms.append(t)
            parts = [f"{term} ({POS_NAMES[pos]})"]
            if s.definition:
                parts[0] += ": " + sentence(s.definition)
            else:
                parts[0] += "."
            if synonyms:
                parts.append("Synonyms: " + ", ".join(synonyms) + ".")
            if s.examples:
                parts.append(f'Example: "{s.examples[0]}"')
            text = " ".join(parts)
            if not text.isprintable() or not (s.definition or s.examples):
                skipped += 1
                continue
            docs.append((f"{pos}{offset}", text))
            counts[POS_NAMES[pos]] += 1
    info = {"documents_by_pos": counts, "skipped_synsets": skipped}
    return hash_order(docs, GENERAL), info


def category_word(lexfile: str) -> str:
    word = lexfile.split(".", 1)[1]
    return CATEGORY_WORDS.get(word, word)


def article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def build_domain(wordnet_dir: Path, shas: dict) -> tuple[list[str], dict]:
    synsets, sha, header = read_nouns(wordnet_dir)
    note_sha(wordnet_dir / "data.noun", sha, shas)
    if header != WORDNET_LICENCE:
        print("warning: licence header of data.noun differs from the WordNet "
              "3.0 licence text in NOTICE", file=sys.stderr)
    group_of = group_synsets(synsets)
    split_of, split_stats = assign_splits(group_of)

    def in_train(offset: str) -> bool:
        return split_of[group_of[offset]] == "train"

    eligible, skipped = [], {"not_train_split": 0, "no_definition": 0,
                             "not_printable": 0}
    hypernyms_dropped = 0
    for offset in sorted(synsets):
        s = synsets[offset]
        if not in_train(offset):
            skipped["not_train_split"] += 1
            continue
        term, definition = term_of(s.lemmas[0]), s.definition
        if not definition:
            skipped["no_definition"] += 1
            continue
        if int(sha_hex("wordnet-domain-phrasing:" + offset)[:8], 16) % 2 == 0:
            lines = [f"Term: {term}"]
            kinds = [h for h in s.hypernyms if in_train(h)]
            instances = [h for h in s.instance_hypernyms if in_train(h)]
            if len(kinds) + len(instances) < len(s.hypernyms) + len(s.instance_hypernyms):
                hypernyms_dropped += 1
            if kinds:
                lines.append(f"Kind of: {term_of(synsets[kinds[0]].lemmas[0])}")
            elif instances:
                lines.append(f"Instance of: {term_of(synsets[instances[0]].lemmas[0])}")
            lines.append(f"Definition: {definition}")
            text = "\n".join(lines)
            printable_parts = lines
        else:
            cat = category_word(s.lexfile)
            text = f"{term} is {article(cat)} {cat} term: {definition}"
            printable_parts = [text]
        if not all(p.isprintable() for p in printable_parts):
            skipped["not_printable"] += 1
            continue
        eligible.append((offset, text))
    chosen, chars = [], 0
    for text in hash_order(eligible, DOMAIN):
        if chars + len(text) > DOMAIN_MAX_CHARS:
            break
        chosen.append(text)
        chars += len(text)
    info = {
        "eligible_synsets": len(eligible),
        "skipped_synsets": skipped,
        "phrasing_a_synsets_with_non_train_hypernyms_dropped": hypernyms_dropped,
        "max_characters": DOMAIN_MAX_CHARS,
        "split_stats": split_stats,
    }
    return chosen, info


# ---------------------------------------------------------------------------
# Jargon File
# ---------------------------------------------------------------------------


def dictd_number(text: str) -> int:
    value = 0
    for ch in text:
        value = value * 64 + DICTD_B64.index(ch)
    return value


def read_jargon(dict_path: Path, index_path: Path, shas: dict):
    """-> [(headword from the index, raw entry text)] in index order."""
    data = gzip.decompress(read_bytes_checked(dict_path, shas))
    entries = []
    index = read_bytes_checked(index_path, shas).decode("utf-8")
    for n, line in enumerate(index.split("\n"), 1):
        if not line:
            continue
        try:
            head, offset, length = line.split("\t")
            start, size = dictd_number(offset), dictd_number(length)
        except ValueError as exc:
            raise BuildError(f"{index_path}:{n}: cannot parse index line: {exc}")
        if start + size > len(data):
            raise BuildError(f"{index_path}:{n}: entry {head!r} lies past the end "
                             f"of {dict_path.name}")
        entries.append((head, data[start:start + size].decode("utf-8")))
    return entries


def _join_prose(lines: list[str]) -> str:
    out = ""
    for line in lines:
        line = " ".join(line.split())
        if not out:
            out = line
        elif re.search(r"\S/$", out):  # wrapped URL or path
            out += line
        else:
            out += " " + line
    return out


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def is_prose(block: list[str]) -> bool:
    """Wrapped running text: body indent only, no box drawing, and every
    line but the last filled to near the wrap width (short lines mean a
    verse, a transcript, a table or a number to keep line by line)."""
    return (all(_indent(l) == 4 for l in block)
            and not BOX_CHARS.search("".join(block))
            and all(len(l) >= PROSE_MIN_LINE for l in block[:-1]))


def clean_jargon_entry(text: str, headwords: set[str]) -> str:
    text = text.replace("\u00a0", " ").replace("\u00ad", "").replace("\t", "    ")
    lines = [l.rstrip() for l in text.split("\n")]
    head = " ".join(lines[0].split())
    i, info = 1, []
    while i < len(lines) and lines[i].strip():
        info.append(lines[i])
        i += 1
    info_text = re.sub(r"^//(?:,\s*)?", "", " ".join(" ".join(info).split()))
    paragraphs, block = [], []
    for line in lines[i:] + [""]:
        if line.strip():
            block.append(line)
            continue
        if block:
            if is_prose(block):
                paragraphs.append(_join_prose(block))
            else:
                cut = min(4, min(_indent(l) for l in block))
                paragraphs.append("\n".join(l[cut:] for l in block))
            block = []
    body = "\n\n".join(paragraphs)

    def unbrace(m: re.Match) -> str:
        inner = " ".join(m.group(1).split())
        if inner and (inner.lower() in headwords or PLAIN_REF.fullmatch(inner)):
            return inner
        return m.group(0)

    for _ in range(2):  # twice, for the odd "{{VAX}}"
        body = re.sub(r"\{([^{}]*)\}", unbrace, body)
    top = head + ("\n" + info_text if info_text else "")
    return top + ("\n\n" + body if body else "")


def build_jargon(dict_path: Path, shas: dict) -> tuple[list[str], dict]:
    index_path = jargon_index(dict_path)
    entries = read_jargon(dict_path, index_path, shas)
    headwords = {head.lower() for head, _ in entries}
    docs, skipped, seen = [], 0, set()
    for head, raw in entries:
        if head.lower().startswith(("00-database", "00database")):
            skipped += 1
            continue
        text = clean_jargon_entry(raw, headwords)
        key = head
        while key in seen:  # never in 4.4.7; keeps keys unique regardless
            key += "'"
        seen.add(key)
        docs.append((key, text))
    if not docs or any(not t.strip() for _, t in docs):
        raise BuildError(f"{dict_path}: empty Jargon File entries")
    info = {"index_entries": len(entries), "header_entries_skipped": skipped}
    return hash_order(docs, JARGON), info


def jargon_index(dict_path: Path) -> Path:
    name = dict_path.name
    stem = name[: -len(".dict.dz")] if name.endswith(".dict.dz") else dict_path.stem
    return dict_path.with_name(stem + ".index")


# ---------------------------------------------------------------------------
# Python standard library
# ---------------------------------------------------------------------------


def python_version() -> str:
    return platform.python_version()


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def python_files(root: Path):
    """-> sorted [(relative posix path, path)] of eligible .py files, and skips."""
    found, skipped = [], {"too_large": 0, "build_specific": 0, "symlink": 0}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in PYTHON_EXCLUDED_DIRS
                             and not d.startswith("config-"))
        for name in filenames:
            if not name.endswith(".py"):
                continue
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                skipped["symlink"] += 1
            elif name.startswith("_sysconfigdata_"):
                skipped["build_specific"] += 1
            elif path.stat().st_size > PYTHON_MAX_FILE_BYTES:
                skipped["too_large"] += 1
            else:
                found.append((rel, path))
    found.sort()
    return found, skipped


def build_python() -> tuple[list[str], dict]:
    root = stdlib_dir()
    files, skipped = python_files(root)
    skipped["not_utf8"] = 0
    docs, total, last = [], 0, None
    for rel, path in files:
        raw = path.read_bytes()
        if total + len(raw) > PYTHON_MAX_TOTAL_BYTES:
            break
        try:
            source = raw.decode("utf-8")
        except UnicodeDecodeError:
            skipped["not_utf8"] += 1
            continue
        total += len(raw)
        last = rel
        docs.append((rel, f"# file: {rel}\n{source}"))
    info = {
        "eligible_files": len(files),
        "files": len(docs),
        "source_bytes": total,
        "first_file": files[0][0] if files else None,
        "last_file": last,
        "skipped_files": skipped,
        "max_source_bytes": PYTHON_MAX_TOTAL_BYTES,
        "max_file_bytes": PYTHON_MAX_FILE_BYTES,
        "excluded_directories": sorted(PYTHON_EXCLUDED_DIRS) + ["config-*"],
    }
    return hash_order(docs, PYTHON), info


def python_licence_section() -> str | None:
    """Section B of the running Python's LICENSE.txt, or None when absent."""
    path = stdlib_dir() / "LICENSE.txt"
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8")
    start = text.find("B. TERMS AND CONDITIONS")
    return text[start:] if start >= 0 else None


# ---------------------------------------------------------------------------
# Build
# ---------------------------------------------------------------------------


def corpus_stats(texts: list[str], blob: bytes) -> dict:
    return {
        "file": None,
        "documents": len(texts),
        "characters": sum(len(t) for t in texts),
        "compressed_bytes": len(blob),
        "sha256": sha_hex_bytes(blob),
    }


def stats_from_blob(blob: bytes) -> dict:
    texts = [json.loads(line)["text"] for line in gzip.decompress(blob).decode("utf-8").splitlines()]
    return corpus_stats(texts, blob)


def wordnet_source(files: list[str], shas: dict) -> dict:
    return {
        "name": "Princeton WordNet 3.0",
        "url": "https://wordnet.princeton.edu/",
        "debian_package": WORDNET_PACKAGE,
        "debian_version": WORDNET_VERSION,
        "files": {f: shas[f] for f in files},
    }


def build_outputs(wordnet_dir: Path, jargon: Path, python_entry=None):
    """Return ({relative path: bytes}, card).

    ``python_entry`` = (blob, card entry) reuses a committed python-stdlib
    corpus instead of building one (``--check`` under another Python).
    """
    shas: dict[str, str] = {}
    outputs: dict[str, bytes] = {}
    corpora: dict[str, dict] = {}

    def add(name, texts, extra):
        if not texts or any(not isinstance(t, str) or not t for t in texts):
            raise BuildError(f"{name}: empty corpus or empty document")
        blob = jsonl_gz({"text": t} for t in texts)
        outputs[f"{name}.jsonl.gz"] = blob
        entry = corpus_stats(texts, blob)
        entry["file"] = f"{name}.jsonl.gz"
        entry.update(extra)
        corpora[name] = entry

    texts, info = build_general(wordnet_dir, shas)
    add(GENERAL, texts, {
        "kind": "general dictionary text",
        "description": (
            "WordNet 3.0 verb, adjective and adverb synsets, one document "
            "each: lemma, part of speech, gloss definition, synonyms and the "
            "first example sentence. No noun glosses."),
        "template": '{lemma} ({pos}): {definition}. Synonyms: {synonyms}. Example: "{example}"',
        "source": wordnet_source(["data.verb", "data.adj", "data.adv"], shas),
        "licence": "WordNet 3.0 licence (BSD-style); full text in NOTICE",
        "selection": info,
    })

    texts, info = build_domain(wordnet_dir, shas)
    add(DOMAIN, texts, {
        "kind": "domain text (WordNet nouns, train split of the bundled tasks only)",
        "description": (
            "WordNet 3.0 noun synsets of every lexicographer file whose split "
            "group is 'train' under damoc.tasks.build's grouping and split "
            "assignment, so no synset of a validation/test group of "
            "wordnet-lexcat or wordnet-defgen appears. Two phrasings mixed by "
            "hash: 'Term/Kind of/Definition' lines (Kind of names only "
            "train-split hypernyms) and '{term} is a(n) {category} term: "
            "{definition}'. Taken in hash order up to a character budget."),
        "template": [
            "Term: {term}\nKind of: {hypernym}\nDefinition: {definition}",
            "{term} is a(n) {category} term: {definition}",
        ],
        "source": wordnet_source(["data.noun"], shas),
        "licence": "WordNet 3.0 licence (BSD-style); full text in NOTICE",
        "selection": info,
    })

    texts, info = build_jargon(jargon, shas)
    add(JARGON, texts, {
        "kind": "computing jargon",
        "description": (
            "The Jargon File 4.4.7 (The Jargon Lexicon), one document per "
            "entry: headword, pronunciation/part of speech, body; dict "
            "cross-reference braces removed, prose re-wrapped to one line per "
            "paragraph, code and diagrams kept line by line."),
        "source": {
            "name": JARGON_UPSTREAM,
            "url": "http://catb.org/jargon/",
            "debian_package": JARGON_PACKAGE,
            "debian_version": JARGON_VERSION,
            "files": {f: shas[f] for f in ("jargon.dict.dz", "jargon.index")},
        },
        "licence": "public domain (see NOTICE)",
        "selection": info,
    })

    if python_entry is None:
        texts, info = build_python()
        add(PYTHON, texts, {
            "kind": "source code",
            "description": (
                "Python source files of the CPython standard library in sorted "
                "relative-path order up to a size budget (tests, idlelib, "
                "lib2to3, tkinter, turtledemo, ensurepip, site-packages, "
                "config-*, _sysconfigdata_*, files over 100 kB left out); one "
                "document per file, headed '# file: {relative path}'."),
            "source": {
                "name": "Python standard library",
                "implementation": platform.python_implementation(),
                "python_version": python_version(),
            },
            "licence": "PSF License Agreement (Python Software Foundation "
                       "License Version 2); full text in NOTICE",
            "selection": info,
        })
    else:
        blob, entry = python_entry
        outputs[f"{PYTHON}.jsonl.gz"] = blob
        corpora[PYTHON] = entry

    total = sum(len(b) for b in outputs.values())
    if corpora[DOMAIN]["compressed_bytes"] > DOMAIN_MAX_GZ:
        print(f"warning: {DOMAIN} is {corpora[DOMAIN]['compressed_bytes']} bytes "
              f"compressed (limit {DOMAIN_MAX_GZ}); lower DOMAIN_MAX_CHARS",
              file=sys.stderr)
    if total > TOTAL_MAX_GZ:
        print(f"warning: the corpora take {total} bytes (limit {TOTAL_MAX_GZ})",
              file=sys.stderr)
    card = {
        "builder_command": BUILDER_COMMAND,
        "apt_command": APT_COMMAND,
        "format": ("one JSON object {\"text\": ...} per line, one document per "
                   "line, gzip; documents ordered by sha256 of a stable key"),
        "corpora": corpora,
        "total_compressed_bytes": total,
    }
    outputs["card.json"] = pretty_json(card)
    outputs["NOTICE"] = NOTICE_TEMPLATE.format(
        python_version=corpora[PYTHON]["source"]["python_version"],
        licence_version=PYTHON_LICENCE_VERSION,
        builder=BUILDER_COMMAND, apt=APT_COMMAND,
        wn_package=WORDNET_PACKAGE, wn_version=WORDNET_VERSION,
        wordnet_licence=WORDNET_LICENCE.rstrip("\n"),
        jargon_upstream=JARGON_UPSTREAM, jg_package=JARGON_PACKAGE,
        jg_version=JARGON_VERSION, jargon_copyright=JARGON_COPYRIGHT,
        python_licence=PYTHON_LICENCE,
    ).encode("utf-8")
    return outputs, card


def committed_python(out: Path):
    """The committed python-stdlib corpus and card entry, or None."""
    try:
        card = json.loads((out / "card.json").read_text(encoding="utf-8"))
        entry = card["corpora"][PYTHON]
        version = entry["source"]["python_version"]
        blob = (out / f"{PYTHON}.jsonl.gz").read_bytes()
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return version, blob, entry


def check(outputs: dict[str, bytes], out: Path, skipped: tuple = ()) -> int:
    """Write to a temporary dir, compare byte-for-byte with ``out``."""
    return check_outputs(outputs, out, skipped, builder_command=BUILDER_COMMAND)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m damoc.zoo.build_corpora",
        description="Build the zoo's pretraining corpora (wordnet-general, "
                    "wordnet-domain, jargon, python-stdlib) deterministically.")
    parser.add_argument("--wordnet-dir", default=DEFAULT_WORDNET_DIR,
                        help="directory holding WordNet 3.0 data.* files "
                             "(default: %(default)s)")
    parser.add_argument("--jargon", default=DEFAULT_JARGON,
                        help="the dictd Jargon File, with its .index next to "
                             "it (default: %(default)s)")
    parser.add_argument("--out", default=str(DEFAULT_OUT),
                        help="output directory (default: damoc/zoo/corpora)")
    parser.add_argument("--check", action="store_true",
                        help="rebuild into a temporary directory and compare "
                             "byte-for-byte with --out; exit 1 on any difference")
    args = parser.parse_args(argv)

    wordnet_dir, jargon = Path(args.wordnet_dir), Path(args.jargon)
    needed = [wordnet_dir / f for f in ("data.noun", "data.verb", "data.adj", "data.adv")]
    needed += [jargon, jargon_index(jargon)]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        print(f"error: input missing ({', '.join(missing)}); install with "
              f"`{APT_COMMAND}`", file=sys.stderr)
        return 2
    out = Path(args.out)

    python_entry, skipped = None, ()
    if args.check:
        committed = committed_python(out)
        if committed is not None and committed[0] != python_version():
            version, blob, entry = committed
            print(f"note: skipping {PYTHON}: it was built with Python {version}, "
                  f"this is Python {python_version()}; its committed file and "
                  "card entry are taken as they are")
            python_entry, skipped = (blob, entry), (f"{PYTHON}.jsonl.gz",)
    elif python_licence_section() != PYTHON_LICENCE:
        print(f"error: LICENSE.txt of this Python ({python_version()}) differs "
              f"from the Python {PYTHON_LICENCE_VERSION} licence text held in "
              "PYTHON_LICENCE (damoc/zoo/build_corpora.py); update it "
              "(and PYTHON_LICENCE_VERSION) before rebuilding", file=sys.stderr)
        return 2
    try:
        outputs, card = build_outputs(wordnet_dir, jargon, python_entry)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.check:
        return check(outputs, out, skipped)
    write_outputs(outputs, out)
    for name in CORPORA:
        e = card["corpora"][name]
        print(f"{name}: {e['documents']} documents, {e['characters']} characters, "
              f"{e['compressed_bytes']} bytes compressed")
    print(f"wrote {len(outputs)} files under {out} "
          f"({card['total_compressed_bytes']} bytes of corpora)")
    return 0


# ---------------------------------------------------------------------------
# Licence text (kept last, it is long)
# ---------------------------------------------------------------------------

# Section B of LICENSE.txt of CPython 3.11.7 (the licence of the Python
# standard library), verbatim; NOTICE quotes it.  A build with another Python whose
# LICENSE.txt lacks this text stops and asks for it to be updated.
PYTHON_LICENCE = """\
B. TERMS AND CONDITIONS FOR ACCESSING OR OTHERWISE USING PYTHON
===============================================================

Python software and documentation are licensed under the
Python Software Foundation License Version 2.

Starting with Python 3.8.6, examples, recipes, and other code in
the documentation are dual licensed under the PSF License Version 2
and the Zero-Clause BSD license.

Some software incorporated into Python is under different licenses.
The licenses are listed with code falling under that license.


PYTHON SOFTWARE FOUNDATION LICENSE VERSION 2
--------------------------------------------

1. This LICENSE AGREEMENT is between the Python Software Foundation
("PSF"), and the Individual or Organization ("Licensee") accessing and
otherwise using this software ("Python") in source or binary form and
its associated documentation.

2. Subject to the terms and conditions of this License Agreement, PSF hereby
grants Licensee a nonexclusive, royalty-free, world-wide license to reproduce,
analyze, test, perform and/or display publicly, prepare derivative works,
distribute, and otherwise use Python alone or in any derivative version,
provided, however, that PSF's License Agreement and PSF's notice of copyright,
i.e., "Copyright (c) 2001, 2002, 2003, 2004, 2005, 2006, 2007, 2008, 2009, 2010,
2011, 2012, 2013, 2014, 2015, 2016, 2017, 2018, 2019, 2020, 2021, 2022, 2023 Python Software Foundation;
All Rights Reserved" are retained in Python alone or in any derivative version
prepared by Licensee.

3. In the event Licensee prepares a derivative work that is based on
or incorporates Python or any part thereof, and wants to make
the derivative work available to others as provided herein, then
Licensee hereby agrees to include in any such work a brief summary of
the changes made to Python.

4. PSF is making Python available to Licensee on an "AS IS"
basis.  PSF MAKES NO REPRESENTATIONS OR WARRANTIES, EXPRESS OR
IMPLIED.  BY WAY OF EXAMPLE, BUT NOT LIMITATION, PSF MAKES NO AND
DISCLAIMS ANY REPRESENTATION OR WARRANTY OF MERCHANTABILITY OR FITNESS
FOR ANY PARTICULAR PURPOSE OR THAT THE USE OF PYTHON WILL NOT
INFRINGE ANY THIRD PARTY RIGHTS.

5. PSF SHALL NOT BE LIABLE TO LICENSEE OR ANY OTHER USERS OF PYTHON
FOR ANY INCIDENTAL, SPECIAL, OR CONSEQUENTIAL DAMAGES OR LOSS AS
A RESULT OF MODIFYING, DISTRIBUTING, OR OTHERWISE USING PYTHON,
OR ANY DERIVATIVE THEREOF, EVEN IF ADVISED OF THE POSSIBILITY THEREOF.

6. This License Agreement will automatically terminate upon a material
breach of its terms and conditions.

7. Nothing in this License Agreement shall be deemed to create any
relationship of agency, partnership, or joint venture between PSF and
Licensee.  This License Agreement does not grant permission to use PSF
trademarks or trade name in a trademark sense to endorse or promote
products or services of Licensee, or any third party.

8. By copying, installing or otherwise using Python, Licensee
agrees to be bound by the terms and conditions of this License
Agreement.


BEOPEN.COM LICENSE AGREEMENT FOR PYTHON 2.0
-------------------------------------------

BEOPEN PYTHON OPEN SOURCE LICENSE AGREEMENT VERSION 1

1. This LICENSE AGREEMENT is between BeOpen.com ("BeOpen"), having an
office at 160 Saratoga Avenue, Santa Clara, CA 95051, and the
Individual or Organization ("Licensee") accessing and otherwise using
this software in source or binary form and its associated
documentation ("the Software").

2. Subject to the terms and conditions of this BeOpen Python License
Agreement, BeOpen hereby grants Licensee a non-exclusive,
royalty-free, world-wide license to reproduce, analyze, test, perform
and/or display publicly, prepare derivative works, distribute, and
otherwise use the Software alone or in any derivative version,
provided, however, that the BeOpen Python License is retained in the
Software, alone or in any derivative version prepared by Licensee.

3. BeOpen is making the Software available to Licensee on an "AS IS"
basis.  BEOPEN MAKES NO REPRESENTATIONS OR WARRANTIES, EXPRESS OR
IMPLIED.  BY WAY OF EXAMPLE, BUT NOT LIMITATION, BEOPEN MAKES NO AND
DISCLAIMS ANY REPRESENTATION OR WARRANTY OF MERCHANTABILITY OR FITNESS
FOR ANY PARTICULAR PURPOSE OR THAT THE USE OF THE SOFTWARE WILL NOT
INFRINGE ANY THIRD PARTY RIGHTS.

4. BEOPEN SHALL NOT BE LIABLE TO LICENSEE OR ANY OTHER USERS OF THE
SOFTWARE FOR ANY INCIDENTAL, SPECIAL, OR CONSEQUENTIAL DAMAGES OR LOSS
AS A RESULT OF USING, MODIFYING OR DISTRIBUTING THE SOFTWARE, OR ANY
DERIVATIVE THEREOF, EVEN IF ADVISED OF THE POSSIBILITY THEREOF.

5. This License Agreement will automatically terminate upon a material
breach of its terms and conditions.

6. This License Agreement shall be governed by and interpreted in all
respects by the law of the State of California, excluding conflict of
law provisions.  Nothing in this License Agreement shall be deemed to
create any relationship of agency, partnership, or joint venture
between BeOpen and Licensee.  This License Agreement does not grant
permission to use BeOpen trademarks or trade names in a trademark
sense to endorse or promote products or services of Licensee, or any
third party.  As an exception, the "BeOpen Python" logos available at
http://www.pythonlabs.com/logos.html may be used according to the
permissions granted on that web page.

7. By copying, installing or otherwise using the software, Licensee
agrees to be bound by the terms and conditions of this License
Agreement.


CNRI LICENSE AGREEMENT FOR PYTHON 1.6.1
---------------------------------------

1. This LICENSE AGREEMENT is between the Corporation for National
Research Initiatives, having an office at 1895 Preston White Drive,
Reston, VA 20191 ("CNRI"), and the Individual or Organization
("Licensee") accessing and otherwise using Python 1.6.1 software in
source or binary form and its associated documentation.

2. Subject to the terms and conditions of this License Agreement, CNRI
hereby grants Licensee a nonexclusive, royalty-free, world-wide
license to reproduce, analyze, test, perform and/or display publicly,
prepare derivative works, distribute, and otherwise use Python 1.6.1
alone or in any derivative version, provided, however, that CNRI's
License Agreement and CNRI's notice of copyright, i.e., "Copyright (c)
1995-2001 Corporation for National Research Initiatives; All Rights
Reserved" are retained in Python 1.6.1 alone or in any derivative
version prepared by Licensee.  Alternately, in lieu of CNRI's License
Agreement, Licensee may substitute the following text (omitting the
quotes): "Python 1.6.1 is made available subject to the terms and
conditions in CNRI's License Agreement.  This Agreement together with
Python 1.6.1 may be located on the internet using the following
unique, persistent identifier (known as a handle): 1895.22/1013.  This
Agreement may also be obtained from a proxy server on the internet
using the following URL: http://hdl.handle.net/1895.22/1013".

3. In the event Licensee prepares a derivative work that is based on
or incorporates Python 1.6.1 or any part thereof, and wants to make
the derivative work available to others as provided herein, then
Licensee hereby agrees to include in any such work a brief summary of
the changes made to Python 1.6.1.

4. CNRI is making Python 1.6.1 available to Licensee on an "AS IS"
basis.  CNRI MAKES NO REPRESENTATIONS OR WARRANTIES, EXPRESS OR
IMPLIED.  BY WAY OF EXAMPLE, BUT NOT LIMITATION, CNRI MAKES NO AND
DISCLAIMS ANY REPRESENTATION OR WARRANTY OF MERCHANTABILITY OR FITNESS
FOR ANY PARTICULAR PURPOSE OR THAT THE USE OF PYTHON 1.6.1 WILL NOT
INFRINGE ANY THIRD PARTY RIGHTS.

5. CNRI SHALL NOT BE LIABLE TO LICENSEE OR ANY OTHER USERS OF PYTHON
1.6.1 FOR ANY INCIDENTAL, SPECIAL, OR CONSEQUENTIAL DAMAGES OR LOSS AS
A RESULT OF MODIFYING, DISTRIBUTING, OR OTHERWISE USING PYTHON 1.6.1,
OR ANY DERIVATIVE THEREOF, EVEN IF ADVISED OF THE POSSIBILITY THEREOF.

6. This License Agreement will automatically terminate upon a material
breach of its terms and conditions.

7. This License Agreement shall be governed by the federal
intellectual property law of the United States, including without
limitation the federal copyright law, and, to the extent such
U.S. federal law does not apply, by the law of the Commonwealth of
Virginia, excluding Virginia's conflict of law provisions.
Notwithstanding the foregoing, with regard to derivative works based
on Python 1.6.1 that incorporate non-separable material that was
previously distributed under the GNU General Public License (GPL), the
law of the Commonwealth of Virginia shall govern this License
Agreement only as to issues arising under or with respect to
Paragraphs 4, 5, and 7 of this License Agreement.  Nothing in this
License Agreement shall be deemed to create any relationship of
agency, partnership, or joint venture between CNRI and Licensee.  This
License Agreement does not grant permission to use CNRI trademarks or
trade name in a trademark sense to endorse or promote products or
services of Licensee, or any third party.

8. By clicking on the "ACCEPT" button where indicated, or by copying,
installing or otherwise using Python 1.6.1, Licensee agrees to be
bound by the terms and conditions of this License Agreement.

        ACCEPT


CWI LICENSE AGREEMENT FOR PYTHON 0.9.0 THROUGH 1.2
--------------------------------------------------

Copyright (c) 1991 - 1995, Stichting Mathematisch Centrum Amsterdam,
The Netherlands.  All rights reserved.

Permission to use, copy, modify, and distribute this software and its
documentation for any purpose and without fee is hereby granted,
provided that the above copyright notice appear in all copies and that
both that copyright notice and this permission notice appear in
supporting documentation, and that the name of Stichting Mathematisch
Centrum or CWI not be used in advertising or publicity pertaining to
distribution of the software without specific, written prior
permission.

STICHTING MATHEMATISCH CENTRUM DISCLAIMS ALL WARRANTIES WITH REGARD TO
THIS SOFTWARE, INCLUDING ALL IMPLIED WARRANTIES OF MERCHANTABILITY AND
FITNESS, IN NO EVENT SHALL STICHTING MATHEMATISCH CENTRUM BE LIABLE
FOR ANY SPECIAL, INDIRECT OR CONSEQUENTIAL DAMAGES OR ANY DAMAGES
WHATSOEVER RESULTING FROM LOSS OF USE, DATA OR PROFITS, WHETHER IN AN
ACTION OF CONTRACT, NEGLIGENCE OR OTHER TORTIOUS ACTION, ARISING OUT
OF OR IN CONNECTION WITH THE USE OR PERFORMANCE OF THIS SOFTWARE.

ZERO-CLAUSE BSD LICENSE FOR CODE IN THE PYTHON DOCUMENTATION
----------------------------------------------------------------------

Permission to use, copy, modify, and/or distribute this software for any
purpose with or without fee is hereby granted.

THE SOFTWARE IS PROVIDED "AS IS" AND THE AUTHOR DISCLAIMS ALL WARRANTIES WITH
REGARD TO THIS SOFTWARE INCLUDING ALL IMPLIED WARRANTIES OF MERCHANTABILITY
AND FITNESS. IN NO EVENT SHALL THE AUTHOR BE LIABLE FOR ANY SPECIAL, DIRECT,
INDIRECT, OR CONSEQUENTIAL DAMAGES OR ANY DAMAGES WHATSOEVER RESULTING FROM
LOSS OF USE, DATA OR PROFITS, WHETHER IN AN ACTION OF CONTRACT, NEGLIGENCE OR
OTHER TORTIOUS ACTION, ARISING OUT OF OR IN CONNECTION WITH THE USE OR
PERFORMANCE OF THIS SOFTWARE.
"""


if __name__ == "__main__":
    sys.exit(main())

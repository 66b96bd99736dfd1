"""Deterministic builder for the two bundled WordNet tasks.

Usage::

    python -m damoc.tasks.build [--wordnet-dir /usr/share/wordnet]
                                [--out damoc/tasks/data] [--check]
    python damoc/tasks/build.py ...          # same thing, as a script

Standard library only.  ``--check`` rebuilds into a temporary directory and
compares every output byte-for-byte with the files under ``--out``; it exits 1
naming each file that differs (or is missing), 0 when all are identical.

Source
------
Princeton WordNet 3.0 as packaged by Debian/Ubuntu::

    apt-get install wordnet-base        # files land in /usr/share/wordnet

The data files used were built from ``wordnet-base`` version ``1:3.0-37``.
Only ``data.noun`` is read.  Every fact and every answer comes from WordNet:
lemmas, lexicographer file (category), gloss definition, gloss examples and
hypernym pointers.  The templates below only phrase the questions.  The
WordNet 3.0 licence (BSD-style) is copied into ``data/NOTICE``.

The Debian package ships no ``lexnames`` file, so the lexicographer-file
numbers (field 2 of each ``data.noun`` line) are mapped with the standard
table from lexnames(5WN) (``00 adj.all`` ... ``44 adj.ppl``), held in
``LEXNAMES`` below.  The table was checked against the installed lexnames(5WN)
man page and against the names compiled into the ``wn`` command-line tool; the
builder also asserts that every ``data.noun`` synset maps to a ``noun.*``
name, that each line's offset equals its byte offset, and spot-checks a few
well-known synsets (dog -> noun.animal, liver -> noun.body, ...).

Gloss parsing: the gloss is the text after `` | ``.  Its *definition* is
the part before the first double-quoted example (an example starts at the
beginning of the gloss or right after ``;``); the *examples* are the
double-quoted strings after that point.  Whitespace is collapsed.

Task 1: ``wordnet-lexcat`` (classification, PubMedQA-like shape)
------------------------------------------------------------------
Each noun synset from one of eight lexicographer files becomes a row; the
gold answer is the category word.  ``choices`` (fixed order, same on every
row) and their WordNet sources::

    act -> noun.act              animal -> noun.animal
    artifact -> noun.artifact    body -> noun.body
    food -> noun.food            plant -> noun.plant
    state -> noun.state          substance -> noun.substance

Why these eight: ``body``, ``state`` (diseases, disorders, conditions) and
``substance`` (chemicals, tissues, fluids) are the medical-flavoured files.
The other five are picked to be confusable with them rather than trivially
separable: ``act`` holds medical procedures and treatments (surgery, therapy,
injection) next to states; ``artifact`` holds drugs and medical devices
(aspirin is noun.artifact) next to substances; ``food`` overlaps with
substance and plant; ``plant`` and ``animal`` overlap with body parts,
substances and foods (organisms vs. their parts and products).  noun.person
was left out on purpose: its glosses nearly all read "someone who ..." /
"a person who ...", which makes the class trivial; noun.process (the other
obvious medical one) has only ~430 usable synsets after filtering, too few
for a balanced split.

Template (``{term}`` is the synset's first lemma with ``_`` -> space,
``{definition}`` the gloss definition without examples)::

    Term: {term}
    Definition: {definition}
    Question: Which category does this term belong to: act, animal, artifact, body, food, plant, state, substance?
    Answer:

``response`` is the label word, ``label`` its index in ``choices``.

Row filters (lexcat): definition of at least 3 words; all text printable; and
neither the term nor the definition may contain ANY of the eight label words
as a whole word, singular or plural, case-insensitive (act/acts,
animal/animals, artifact/artifacts/artefact/artefacts, body/bodies,
food/foods, plant/plants, state/states, substance/substances).  The filter is
symmetric (it does not look at the gold label), so it removes the literal
"a plant of the genus ..." cue without turning the absence of a word into an
anti-cue.  Per split and per class the rows are then capped (train 750,
validation 100, test 100), keeping the rows whose sha256(task:id) sorts
lowest; the builder fails if the largest/smallest class ratio in any split
exceeds 3.

Task 2: ``wordnet-defgen`` (generation, BillSum-like shape)
-------------------------------------------------------------
Definition modelling over all noun synsets.  Template (a line is omitted when
WordNet has nothing for it; "Instance of" is used for instance hypernyms,
e.g. people and places)::

    Term: {term}
    Synonyms: {other lemmas of the synset, comma-separated}
    Kind of: {first lemma of each hypernym synset, at most 3}
    Instance of: {first lemma of each instance-hypernym synset, at most 3}
    Example: {first quoted example sentence of the gloss}
    Write a short dictionary definition of the term.
    Definition:

``response`` is the gloss definition (no examples); ``choices`` and
``label`` are null.  Row filters (defgen): definition of at least 3 words; all
text printable; the term must not occur in its own definition (whole word(s),
case-insensitive, also with a plain ``s``/``es`` plural); rows whose prompt
is identical to another row's prompt (same term and hypernyms, different
sense, e.g. "lifeline / Kind of: line") are dropped in both tasks, as they
have two right answers.  Per split the rows
with the lowest sha256(task:id) are kept (train 10000, validation 1000,
test 1000).

Split rule (both tasks, shared)
-------------------------------
All 82,115 noun synsets are grouped by union-find over their lemmas,
case-insensitively: two synsets sharing any lemma are in the same group, so
no term (or synonym) can appear in two splits.  The group key is the
alphabetically smallest lemma of the group (lower case, ``_`` -> space).
Groups are assigned by ``int(sha256("wn30-split:" + key)[:8], 16) % 100``:
0-79 train, 80-89 validation, 90-99 test.  Exception: groups of more than
100 synsets (in practice a single chain of ~12k synsets of polysemous common
words) always go to train, so the evaluation splits are not dominated by one
arbitrary chain.  Because the grouping is computed once over all nouns and
shared by both tasks, a lemma is in the same split in both tasks.
Subsampling happens after the split assignment, so it cannot break the
disjointness.  Within a file, rows are ordered by sha256(task:id)
(a deterministic shuffle).

Output
------
``{out}/wordnet-lexcat/{train,validation,test}.jsonl.gz``,
``{out}/wordnet-defgen/{train,validation,test}.jsonl.gz``, a ``card.json``
per task and ``{out}/NOTICE``.  Each line is one JSON object with exactly
the keys id, prompt, response, choices, label, meta, serialised with
``json.dumps(obj, ensure_ascii=False, sort_keys=True, separators=(",", ":"))``
and ``"\\n"`` line ends; gzip uses mtime=0 and an empty file name, so the
bytes are identical run to run (given the same zlib).  Files are written to a
temporary name and moved into place with ``os.replace``.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import hashlib
import io
import json
import os
import re
import sys
import tempfile
from pathlib import Path

# ---------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------

DEBIAN_PACKAGE = "wordnet-base"
DEBIAN_VERSION = "1:3.0-37"  # from `dpkg-query -W wordnet-base` at build time
DEFAULT_WORDNET_DIR = "/usr/share/wordnet"
DEFAULT_OUT = Path(__file__).resolve().parent / "data"
BUILDER_COMMAND = (
    "python -m damoc.tasks.build --wordnet-dir /usr/share/wordnet "
    "--out damoc/tasks/data"
)
# sha256 of /usr/share/wordnet/data.noun from wordnet-base 1:3.0-37; a
# different file only triggers a warning (and --check will then report diffs).
EXPECTED_DATA_NOUN_SHA256 = (
    "fea17d2f9656611334eac790e5d69e47645fa180c4aa481fb4cd9b3520754ca2")

# lexnames(5WN): lexicographer file number -> name.
LEXNAMES = {
    0: "adj.all", 1: "adj.pert", 2: "adv.all", 3: "noun.Tops",
    4: "noun.act", 5: "noun.animal", 6: "noun.artifact",
    7: "noun.attribute", 8: "noun.body", 9: "noun.cognition",
    10: "noun.communication", 11: "noun.event", 12: "noun.feeling",
    13: "noun.food", 14: "noun.group", 15: "noun.location",
    16: "noun.motive", 17: "noun.object", 18: "noun.person",
    19: "noun.phenomenon", 20: "noun.plant", 21: "noun.possession",
    22: "noun.process", 23: "noun.quantity", 24: "noun.relation",
    25: "noun.shape", 26: "noun.state", 27: "noun.substance",
    28: "noun.time", 29: "verb.body", 30: "verb.change",
    31: "verb.cognition", 32: "verb.communication", 33: "verb.competition",
    34: "verb.consumption", 35: "verb.contact", 36: "verb.creation",
    37: "verb.emotion", 38: "verb.motion", 39: "verb.perception",
    40: "verb.possession", 41: "verb.social", 42: "verb.stative",
    43: "verb.weather", 44: "adj.ppl",
}

# (offset, first lemma, lexicographer file) facts checked on every build.
SPOT_CHECKS = (
    ("02084071", "dog", "noun.animal"),
    ("05385534", "liver", "noun.body"),
    ("14117805", "diabetes", "noun.state"),
    ("14845743", "water", "noun.substance"),
    ("07679356", "bread", "noun.food"),
    ("02748618", "aspirin", "noun.artifact"),
    ("00671351", "operation", "noun.act"),
    ("13465998", "digestion", "noun.process"),
)

LEXCAT = "wordnet-lexcat"
DEFGEN = "wordnet-defgen"
SPLITS = ("train", "validation", "test")

# label word -> lexicographer file; CHOICES is the fixed order on every row.
LEXCAT_LABELS = {
    "act": "noun.act",
    "animal": "noun.animal",
    "artifact": "noun.artifact",
    "body": "noun.body",
    "food": "noun.food",
    "plant": "noun.plant",
    "state": "noun.state",
    "substance": "noun.substance",
}
CHOICES = sorted(LEXCAT_LABELS)
LABEL_FORMS = {
    "act": ("act", "acts"),
    "animal": ("animal", "animals"),
    "artifact": ("artifact", "artifacts", "artefact", "artefacts"),
    "body": ("body", "bodies"),
    "food": ("food", "foods"),
    "plant": ("plant", "plants"),
    "state": ("state", "states"),
    "substance": ("substance", "substances"),
}
LABEL_WORD_RE = re.compile(
    r"(?<![A-Za-z0-9])(?:"
    + "|".join(f for label in CHOICES for f in LABEL_FORMS[label])
    + r")(?![A-Za-z0-9])",
    re.IGNORECASE,
)

LEXCAT_CAPS = {"train": 750, "validation": 100, "test": 100}
DEFGEN_CAPS = {"train": 10000, "validation": 1000, "test": 1000}
MAX_BALANCE_RATIO = 3.0
MIN_DEFINITION_WORDS = 3
BIG_GROUP = 100  # groups with more synsets than this always go to train
MAX_HYPERNYMS = 3

LEXCAT_TEMPLATE = (
    "Term: {term}\n"
    "Definition: {definition}\n"
    "Question: Which category does this term belong to: "
    + ", ".join(CHOICES)
    + "?\n"
    "Answer:"
)
DEFGEN_TEMPLATE = (
    "Term: {term}\n"
    "Synonyms: {synonyms}\n"
    "Kind of: {hypernyms}\n"
    "Instance of: {instance_hypernyms}\n"
    "Example: {example}\n"
    "Write a short dictionary definition of the term.\n"
    "Definition:"
)

SPLIT_RULE = (
    "All WordNet 3.0 noun synsets are grouped by union-find over their lemmas "
    "(case-insensitive), so synsets sharing any lemma share a split; the "
    "group key is the group's alphabetically smallest lemma (lower case, '_' "
    "-> ' '). bucket = int(sha256('wn30-split:' + key)[:8], 16) % 100: "
    "0-79 train, 80-89 validation, 90-99 test; groups with more than "
    f"{BIG_GROUP} synsets always go to train. The grouping and assignment "
    "are shared by wordnet-lexcat and wordnet-defgen. Rows are then "
    "subsampled within each split by lowest sha256(task + ':' + id) and "
    "ordered by that hash."
)

LICENCE_TEXT = """\
This software and database is being provided to you, the LICENSEE, by
Princeton University under the following license.  By obtaining, using
and/or copying this software and database, you agree that you have
read, understood, and will comply with these terms and conditions.:

Permission to use, copy, modify and distribute this software and
database and its documentation for any purpose and without fee or
royalty is hereby granted, provided that you agree to comply with
the following copyright notice and statements, including the disclaimer,
and that the same appear on ALL copies of the software, database and
documentation, including modifications that you make for internal
use or for distribution.

WordNet 3.0 Copyright 2006 by Princeton University.  All rights reserved.

THIS SOFTWARE AND DATABASE IS PROVIDED "AS IS" AND PRINCETON
UNIVERSITY MAKES NO REPRESENTATIONS OR WARRANTIES, EXPRESS OR
IMPLIED.  BY WAY OF EXAMPLE, BUT NOT LIMITATION, PRINCETON
UNIVERSITY MAKES NO REPRESENTATIONS OR WARRANTIES OF MERCHANT-
ABILITY OR FITNESS FOR ANY PARTICULAR PURPOSE OR THAT THE USE
OF THE LICENSED SOFTWARE, DATABASE OR DOCUMENTATION WILL NOT
INFRINGE ANY THIRD PARTY PATENTS, COPYRIGHTS, TRADEMARKS OR
OTHER RIGHTS.

The name of Princeton University or Princeton may not be used in
advertising or publicity pertaining to distribution of the software
and/or database.  Title to copyright in this software, database and
any associated documentation shall at all times remain with
Princeton University and LICENSEE agrees to preserve same.
"""

NOTICE_TEMPLATE = """\
WordNet-derived task data (damoc/tasks/data)
============================================

The files under wordnet-lexcat/ and wordnet-defgen/ are derived from
Princeton WordNet 3.0 (https://wordnet.princeton.edu/), as distributed in
the Debian package {package} (version {version}; install with
`apt-get install {package}`, files in /usr/share/wordnet).  They were
generated by damoc/tasks/build.py from data.noun: every term, category,
definition, example sentence and hypernym is taken from WordNet, and fixed
English templates only phrase the prompts.  The task files are therefore a
modified (templated) copy of parts of the WordNet database, distributed
under the WordNet 3.0 licence, reproduced verbatim below from
/usr/share/doc/{package}/copyright (the same text heads data.noun).

WordNet 3.0 licence
-------------------

{licence}"""


class BuildError(Exception):
    """A problem with the input data; reported as a one-line error."""


# ---------------------------------------------------------------------------
# Reading WordNet
# ---------------------------------------------------------------------------


class Synset:
    __slots__ = (
        "offset", "lexfile", "lemmas", "hypernyms", "instance_hypernyms",
        "definition", "examples",
    )

    def __init__(self, offset, lexfile, lemmas, hypernyms, instance_hypernyms,
                 definition, examples):
        self.offset = offset
        self.lexfile = lexfile
        self.lemmas = lemmas
        self.hypernyms = hypernyms
        self.instance_hypernyms = instance_hypernyms
        self.definition = definition
        self.examples = examples


_EXAMPLE_START = re.compile(r'(?:^|;\s*)"')
_QUOTED = re.compile(r'"([^"]*)"')


def _clean(text: str) -> str:
    return " ".join(text.split())


def split_gloss(gloss: str) -> tuple[str, list[str]]:
    """Split a WordNet gloss into (definition, [example sentences])."""
    m = _EXAMPLE_START.search(gloss)
    if m is None:
        definition, rest = gloss, ""
    else:
        definition, rest = gloss[: m.start()], gloss[m.start():]
    definition = _clean(definition).strip(" ;")
    examples = [_clean(e) for e in _QUOTED.findall(rest)]
    return definition, [e for e in examples if e]


def read_licence_header(raw: bytes) -> str:
    """The licence text that heads data.noun (lines starting with spaces)."""
    lines = []
    for line in raw.decode("ascii").split("\n"):
        if not line.startswith("  "):
            break
        lines.append(re.sub(r"^\s+\d+ ?", "", line).rstrip())
    return "\n".join(lines) + "\n"


# Part of speech of each data file, its ss_type letters and lexfile prefix.
DATA_FILES = {
    "n": ("data.noun", ("n",), "noun."),
    "v": ("data.verb", ("v",), "verb."),
    "a": ("data.adj", ("a", "s"), "adj."),
    "r": ("data.adv", ("r",), "adv."),
}
# Adjective lemmas may carry a syntactic marker: (a), (p) or (ip).
_ADJ_MARKER = re.compile(r"\((?:a|ip|p)\)$")


def read_data_file(wordnet_dir: Path, pos: str) -> tuple[dict[str, Synset], str, bytes]:
    """Parse data.{noun,verb,adj,adv} -> ({offset: Synset}, sha256, raw bytes).

    ``pos`` is "n", "v", "a" or "r".  Hypernyms are the ``@`` / ``@i``
    pointers to synsets of the same part of speech; adjective lemma markers
    ("(a)", "(p)", "(ip)") are removed.
    """
    filename, ss_types, prefix = DATA_FILES[pos]
    path = wordnet_dir / filename
    raw = path.read_bytes()
    sha = hashlib.sha256(raw).hexdigest()
    synsets: dict[str, Synset] = {}
    byte_pos = 0
    for line in raw.split(b"\n"):
        start, byte_pos = byte_pos, byte_pos + len(line) + 1
        if not line or line.startswith(b"  "):
            continue
        text = line.decode("ascii")
        head, sep, gloss = text.partition(" | ")
        fields = head.split()
        try:
            offset, lexnum, ss_type = fields[0], int(fields[1]), fields[2]
            if int(offset) != start:
                raise BuildError(f"{filename}: offset {offset} is at byte {start}")
            w_cnt = int(fields[3], 16)
            lemmas = [fields[4 + 2 * i] for i in range(w_cnt)]
            if pos == "a":
                lemmas = [_ADJ_MARKER.sub("", l) for l in lemmas]
            i = 4 + 2 * w_cnt
            p_cnt = int(fields[i])
            i += 1
            hypernyms, instance_hypernyms = [], []
            for _ in range(p_cnt):
                symbol, target, target_pos = fields[i], fields[i + 1], fields[i + 2]
                i += 4
                if target_pos == pos and symbol == "@":
                    hypernyms.append(target)
                elif target_pos == pos and symbol == "@i":
                    instance_hypernyms.append(target)
        except (IndexError, ValueError) as exc:
            raise BuildError(f"{filename}: cannot parse synset line at byte {start}: {exc}")
        lexfile = LEXNAMES.get(lexnum)
        if ss_type not in ss_types or lexfile is None or not lexfile.startswith(prefix):
            raise BuildError(
                f"{filename}: synset {offset} has type {ss_type!r} and "
                f"lexicographer file {lexnum:02d} ({lexfile}); expected a {prefix}* file"
            )
        definition, examples = split_gloss(gloss if sep else "")
        synsets[offset] = Synset(offset, lexfile, lemmas, hypernyms,
                                 instance_hypernyms, definition, examples)
    return synsets, sha, raw


def read_nouns(wordnet_dir: Path) -> tuple[dict[str, Synset], str, str]:
    """Parse data.noun -> ({offset: Synset}, sha256 of the file, licence)."""
    synsets, sha, raw = read_data_file(wordnet_dir, "n")
    for offset, lemma, lexfile in SPOT_CHECKS:
        s = synsets.get(offset)
        if s is None or s.lemmas[0] != lemma or s.lexfile != lexfile:
            got = None if s is None else (s.lemmas[0], s.lexfile)
            raise BuildError(
                f"data.noun: spot check failed for {offset}: expected "
                f"({lemma}, {lexfile}), got {got}; is this WordNet 3.0?"
            )
    return synsets, sha, read_licence_header(raw)


# ---------------------------------------------------------------------------
# Grouping and splits
# ---------------------------------------------------------------------------


def term_of(lemma: str) -> str:
    return lemma.replace("_", " ")


def sha_int(text: str) -> int:
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:16], 16)


def sha_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def group_synsets(synsets: dict[str, Synset]) -> dict[str, str]:
    """Union-find over lowercase lemmas -> {offset: group key}."""
    parent = {o: o for o in synsets}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    first_owner: dict[str, str] = {}
    for offset in sorted(synsets):
        for lemma in synsets[offset].lemmas:
            key = lemma.lower()
            other = first_owner.setdefault(key, offset)
            if other != offset:
                a, b = find(offset), find(other)
                if a != b:
                    parent[max(a, b)] = min(a, b)
    members: dict[str, list[str]] = collections.defaultdict(list)
    for offset in synsets:
        members[find(offset)].append(offset)
    group_of: dict[str, str] = {}
    for root, offsets in members.items():
        key = min(term_of(l).lower() for o in offsets for l in synsets[o].lemmas)
        for o in offsets:
            group_of[o] = key
    return group_of


def assign_splits(group_of: dict[str, str]) -> tuple[dict[str, str], dict]:
    """group key -> split name, plus a few statistics."""
    sizes = collections.Counter(group_of.values())
    split_of: dict[str, str] = {}
    big = []
    for key in sorted(sizes):
        if sizes[key] > BIG_GROUP:
            split_of[key] = "train"
            big.append(sizes[key])
            continue
        bucket = int(sha_hex("wn30-split:" + key)[:8], 16) % 100
        split_of[key] = "train" if bucket < 80 else "validation" if bucket < 90 else "test"
    stats = {
        "noun_synsets": len(group_of),
        "groups": len(sizes),
        "groups_forced_to_train_sizes": sorted(big, reverse=True),
    }
    return split_of, stats


# ---------------------------------------------------------------------------
# Row construction
# ---------------------------------------------------------------------------


def slug(lemma: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", lemma.lower()).strip("_") or "x"


def row_id(s: Synset) -> str:
    return f"wn30-n-{s.offset}-{slug(s.lemmas[0])}"


def printable(*texts: str) -> bool:
    return all(t.isprintable() for t in texts)


def contains_phrase(text: str, phrase: str) -> bool:
    pattern = (r"(?<![A-Za-z0-9])" + re.escape(phrase.lower())
               + r"(?:s|es)?(?![A-Za-z0-9])")
    return re.search(pattern, text.lower()) is not None


def base_meta(s: Synset, group: str) -> dict:
    return {
        "synset_offset": s.offset,
        "pos": "n",
        "lexfile": s.lexfile,
        "lemma": s.lemmas[0],
        "lemmas": list(s.lemmas),
        "group": group,
    }


def lexcat_rows(synsets, group_of, skipped):
    label_of = {v: k for k, v in LEXCAT_LABELS.items()}
    for offset in sorted(synsets):
        s = synsets[offset]
        label = label_of.get(s.lexfile)
        if label is None:
            continue
        term, definition = term_of(s.lemmas[0]), s.definition
        if len(definition.split()) < MIN_DEFINITION_WORDS:
            skipped["short_definition"] += 1
            continue
        if not printable(term, definition):
            skipped["not_printable"] += 1
            continue
        if LABEL_WORD_RE.search(term) or LABEL_WORD_RE.search(definition):
            skipped["label_word_in_term_or_definition"] += 1
            continue
        yield {
            "id": row_id(s),
            "prompt": LEXCAT_TEMPLATE.format(term=term, definition=definition),
            "response": label,
            "choices": list(CHOICES),
            "label": CHOICES.index(label),
            "meta": base_meta(s, group_of[offset]),
        }


def defgen_rows(synsets, group_of, skipped):
    for offset in sorted(synsets):
        s = synsets[offset]
        term, definition = term_of(s.lemmas[0]), s.definition
        if len(definition.split()) < MIN_DEFINITION_WORDS:
            skipped["short_definition"] += 1
            continue
        if contains_phrase(definition, term):
            skipped["term_in_definition"] += 1
            continue
        synonyms = ", ".join(term_of(l) for l in s.lemmas[1:])
        hypernyms = ", ".join(
            term_of(synsets[h].lemmas[0]) for h in s.hypernyms[:MAX_HYPERNYMS])
        instance_hypernyms = ", ".join(
            term_of(synsets[h].lemmas[0])
            for h in s.instance_hypernyms[:MAX_HYPERNYMS])
        example = s.examples[0] if s.examples else ""
        if not printable(term, definition, synonyms, hypernyms,
                         instance_hypernyms, example):
            skipped["not_printable"] += 1
            continue
        values = {
            "term": term, "synonyms": synonyms, "hypernyms": hypernyms,
            "instance_hypernyms": instance_hypernyms, "example": example,
        }
        lines = []
        for line in DEFGEN_TEMPLATE.split("\n"):
            fields = re.findall(r"\{(\w+)\}", line)
            if fields and not all(values[f] for f in fields):
                continue
            lines.append(line.format(**values))
        meta = base_meta(s, group_of[offset])
        meta["hypernym_offsets"] = list(s.hypernyms)
        meta["instance_hypernym_offsets"] = list(s.instance_hypernyms)
        yield {
            "id": row_id(s),
            "prompt": "\n".join(lines),
            "response": definition,
            "choices": None,
            "label": None,
            "meta": meta,
        }


def drop_ambiguous(rows, skipped):
    """Drop every row whose prompt is identical to another row's prompt.

    Such rows (same term, same hypernyms, different senses) have more than
    one correct answer from the same input.
    """
    counts = collections.Counter(r["prompt"] for r in rows)
    kept = [r for r in rows if counts[r["prompt"]] == 1]
    if len(kept) != len(rows):
        skipped["ambiguous_identical_prompt"] += len(rows) - len(kept)
    return kept


def select(task, rows, split_of, caps, by_label):
    """Split rows, cap per split (and per label), order by hash."""
    pools = {sp: collections.defaultdict(list) for sp in SPLITS}
    for row in rows:
        split = split_of[row["meta"]["group"]]
        key = row["response"] if by_label else ""
        pools[split][key].append(row)
    chosen, pool_sizes = {}, {}
    for split in SPLITS:
        picked = []
        pool_sizes[split] = {k: len(v) for k, v in sorted(pools[split].items())}
        for key in sorted(pools[split]):
            ranked = sorted(pools[split][key],
                            key=lambda r: sha_hex(task + ":" + r["id"]))
            picked.extend(ranked[: caps[split]])
        picked.sort(key=lambda r: sha_hex(task + ":" + r["id"]))
        chosen[split] = picked
    return chosen, pool_sizes


# ---------------------------------------------------------------------------
# Serialisation
# ---------------------------------------------------------------------------


def dump_line(obj) -> str:
    return json.dumps(obj, ensure_ascii=False, sort_keys=True,
                      separators=(",", ":"))


def jsonl_gz(rows) -> bytes:
    text = "".join(dump_line(r) + "\n" for r in rows).encode("utf-8")
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0,
                       compresslevel=9) as gz:
        gz.write(text)
    return buf.getvalue()


def pretty_json(obj) -> bytes:
    return (json.dumps(obj, ensure_ascii=False, sort_keys=True, indent=2)
            + "\n").encode("utf-8")


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("." + path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


# ---------------------------------------------------------------------------
# Build
# ---------------------------------------------------------------------------


def source_info(sha: str) -> dict:
    return {
        "name": "Princeton WordNet 3.0",
        "url": "https://wordnet.princeton.edu/",
        "debian_package": DEBIAN_PACKAGE,
        "debian_version": DEBIAN_VERSION,
        "install": f"apt-get install {DEBIAN_PACKAGE}",
        "file": "data.noun",
        "file_sha256": sha,
    }


def build_outputs(wordnet_dir: Path) -> tuple[dict[str, bytes], dict]:
    """Return {relative path: bytes} for every output file, and a summary."""
    synsets, sha, header_licence = read_nouns(wordnet_dir)
    if header_licence != LICENCE_TEXT:
        print("warning: licence header of data.noun differs from the WordNet "
              "3.0 licence text in NOTICE", file=sys.stderr)
    if EXPECTED_DATA_NOUN_SHA256 and sha != EXPECTED_DATA_NOUN_SHA256:
        print(f"warning: data.noun sha256 {sha} differs from the one the "
              f"bundled data were built from ({EXPECTED_DATA_NOUN_SHA256})",
              file=sys.stderr)
    group_of = group_synsets(synsets)
    split_of, split_stats = assign_splits(group_of)
    outputs: dict[str, bytes] = {}
    summary = {}
    licence_ref = "WordNet 3.0 licence (BSD-style); full text in ../NOTICE"
    # Card keys shared by both tasks (cards are written with sorted keys, so order is irrelevant).
    common = {
        "split_rule": SPLIT_RULE,
        "split_stats": split_stats,
        "source": source_info(sha),
        "licence": licence_ref,
        "builder_command": BUILDER_COMMAND,
        "files": {split: f"{split}.jsonl.gz" for split in SPLITS},
    }

    # --- lexcat -----------------------------------------------------------
    skipped = collections.Counter()
    rows = drop_ambiguous(list(lexcat_rows(synsets, group_of, skipped)), skipped)
    chosen, pools = select(LEXCAT, rows, split_of, LEXCAT_CAPS, by_label=True)
    balance, ratios = {}, {}
    for split in SPLITS:
        counts = collections.Counter(r["response"] for r in chosen[split])
        balance[split] = {label: counts.get(label, 0) for label in CHOICES}
        lo, hi = min(balance[split].values()), max(balance[split].values())
        if lo == 0 or hi / lo > MAX_BALANCE_RATIO:
            raise BuildError(f"{LEXCAT}/{split}: label balance {balance[split]} "
                             f"exceeds the {MAX_BALANCE_RATIO}x limit")
        ratios[split] = round(hi / lo, 3)
    for split in SPLITS:
        outputs[f"{LEXCAT}/{split}.jsonl.gz"] = jsonl_gz(chosen[split])
    card = {
        "name": LEXCAT,
        "description": (
            "Lexical-category classification from WordNet 3.0: given a noun "
            "and its WordNet definition, pick the lexicographer category "
            "(noun.act, noun.animal, noun.artifact, noun.body, noun.food, "
            "noun.plant, noun.state, noun.substance) it is filed under. "
            "body/state/substance are the medical-flavoured categories; the "
            "others are chosen as plausible confusers (procedures, drugs and "
            "devices, foods, organisms)."),
        "task_type": "classification",
        "metrics": ["accuracy"],
        "choices": list(CHOICES),
        "label_source": dict(LEXCAT_LABELS),
        "rows": {split: len(chosen[split]) for split in SPLITS},
        "label_balance": balance,
        "label_balance_max_min_ratio": ratios,
        "eligible_rows_before_subsampling": pools,
        "skipped_rows": dict(sorted(skipped.items())),
        "caps_per_label": dict(LEXCAT_CAPS),
        "filters": [
            f"definition has at least {MIN_DEFINITION_WORDS} words",
            "term and definition are printable",
            "neither term nor definition contains any label word (singular "
            "or plural, whole word, case-insensitive): "
            + ", ".join(f for label in CHOICES for f in LABEL_FORMS[label]),
            "rows whose prompt is identical to another row's prompt are "
            "dropped",
        ],
        "template": LEXCAT_TEMPLATE,
        "response": "the label word; label = its index in choices",
        **common,
    }
    outputs[f"{LEXCAT}/card.json"] = pretty_json(card)
    summary[LEXCAT] = {"rows": card["rows"], "label_balance": balance}

    # --- defgen -----------------------------------------------------------
    skipped = collections.Counter()
    rows = drop_ambiguous(list(defgen_rows(synsets, group_of, skipped)), skipped)
    chosen, pools = select(DEFGEN, rows, split_of, DEFGEN_CAPS, by_label=False)
    for split in SPLITS:
        outputs[f"{DEFGEN}/{split}.jsonl.gz"] = jsonl_gz(chosen[split])
    card = {
        "name": DEFGEN,
        "description": (
            "Definition modelling from WordNet 3.0: given a noun, its "
            "synonyms, hypernyms and (when WordNet has one) a usage example, "
            "write its dictionary definition; the reference is the WordNet "
            "gloss definition."),
        "task_type": "generation",
        "metrics": ["rouge_l", "bertscore"],
        "rows": {split: len(chosen[split]) for split in SPLITS},
        "eligible_rows_before_subsampling": {
            split: pools[split].get("", 0) for split in SPLITS},
        "skipped_rows": dict(sorted(skipped.items())),
        "caps": dict(DEFGEN_CAPS),
        "filters": [
            f"definition has at least {MIN_DEFINITION_WORDS} words",
            "the term (first lemma) does not occur in its own definition "
            "(whole words, case-insensitive, also with an s/es plural)",
            "all prompt parts are printable",
            "rows whose prompt is identical to another row's prompt (same "
            "term and hypernyms, different sense) are dropped",
        ],
        "template": DEFGEN_TEMPLATE,
        "template_note": (
            "lines whose WordNet source is empty are omitted; Kind of / "
            f"Instance of list the first lemma of at most {MAX_HYPERNYMS} "
            "hypernym / instance-hypernym synsets; Example is the first "
            "quoted example of the gloss"),
        "response": "the WordNet gloss definition (examples removed)",
        **common,
    }
    outputs[f"{DEFGEN}/card.json"] = pretty_json(card)
    summary[DEFGEN] = {"rows": card["rows"]}

    outputs["NOTICE"] = NOTICE_TEMPLATE.format(
        package=DEBIAN_PACKAGE, version=DEBIAN_VERSION,
        licence=LICENCE_TEXT).encode("utf-8")
    return outputs, summary


def write_outputs(outputs: dict[str, bytes], out: Path) -> None:
    for rel in sorted(outputs):
        write_atomic(out / rel, outputs[rel])


def gunzip_or_none(data: bytes):
    try:
        return gzip.decompress(data)
    except (OSError, EOFError):
        return None


def check(outputs: dict[str, bytes], out: Path, skipped: tuple = (),
          builder_command: str = BUILDER_COMMAND) -> int:
    """Write to a temporary dir, compare byte-for-byte with ``out`` (files in
    ``skipped`` are left out). Shared with damoc.zoo.build_corpora."""
    with tempfile.TemporaryDirectory(prefix="damoc-build-check-") as tmp:
        write_outputs(outputs, Path(tmp))
        differing = []
        for rel in sorted(outputs):
            if rel in skipped:
                continue
            fresh = (Path(tmp) / rel).read_bytes()
            committed_path = out / rel
            if not committed_path.is_file():
                differing.append(f"{committed_path}: missing")
                continue
            committed = committed_path.read_bytes()
            if committed == fresh:
                continue
            note = ""
            if rel.endswith(".gz"):
                a, b = gunzip_or_none(committed), gunzip_or_none(fresh)
                if a is not None and a == b:
                    note = (" (decompressed content is identical: only the "
                            "gzip bytes differ, e.g. a different zlib)")
            differing.append(f"{committed_path}: differs from a fresh build{note}")
    if differing:
        for line in differing:
            print(f"check failed: {line}", file=sys.stderr)
        print(f"rebuild with: {builder_command}", file=sys.stderr)
        return 1
    print(f"check ok: {len(outputs) - len(skipped)} files under {out} match a "
          "fresh build")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m damoc.tasks.build",
        description="Build the bundled WordNet tasks (wordnet-lexcat, "
                    "wordnet-defgen) deterministically from WordNet 3.0.")
    parser.add_argument("--wordnet-dir", default=DEFAULT_WORDNET_DIR,
                        help="directory holding data.noun (default: %(default)s)")
    parser.add_argument("--out", default=str(DEFAULT_OUT),
                        help="output directory (default: damoc/tasks/data)")
    parser.add_argument("--check", action="store_true",
                        help="rebuild into a temporary directory and compare "
                             "byte-for-byte with --out; exit 1 on any difference")
    args = parser.parse_args(argv)

    wordnet_dir = Path(args.wordnet_dir)
    if not (wordnet_dir / "data.noun").is_file():
        print(f"error: WordNet 3.0 data not found ({wordnet_dir / 'data.noun'} "
              f"is missing); install it with `apt-get install {DEBIAN_PACKAGE}`",
              file=sys.stderr)
        return 2
    try:
        outputs, summary = build_outputs(wordnet_dir)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    if args.check:
        return check(outputs, out)
    write_outputs(outputs, out)
    for task, info in summary.items():
        print(f"{task}: rows {info['rows']}")
        if "label_balance" in info:
            for split, counts in info["label_balance"].items():
                print(f"  {split} balance: {counts}")
    print(f"wrote {len(outputs)} files under {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

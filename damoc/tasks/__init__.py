"""Bundled domain tasks (real WordNet 3.0 text), usable offline as `data.source: bundled:<task>`.

The files under data/ are built by `python -m damoc.tasks.build` from the Debian package
wordnet-base; see data/NOTICE for source and licence and each task's card.json for its statistics.
"""

import json
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent / "data"


def task_names() -> list[str]:
    return sorted(p.name for p in DATA_DIR.iterdir() if (p / "card.json").is_file())


def task_card(name: str) -> dict:
    with open(DATA_DIR / name / "card.json", encoding="utf-8") as f:
        return json.load(f)

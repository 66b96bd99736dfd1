"""Bundled domain tasks (real WordNet 3.0 text), usable offline as `data.source: bundled:<task>`.

The files under data/ are built by `python -m damoc.tasks.build` from the Debian package
wordnet-base; see data/NOTICE for source and licence and each task's card.json for its statistics.
"""

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent / "data"


"""The main job, `damoc select`: config -> data -> models -> trials -> ranking -> report.

This version runs the stages that exist (config, data loading into canonical records, cached by
fingerprint) and says plainly which stages it does not run yet, rather than pretending to rank.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from damoc.config import RunConfig, config_to_yaml
from damoc.data import prepare_data
from damoc.data.inspect import format_inspection, inspect_data
from damoc.fingerprint import default_cache_root
from damoc.io import write_json, write_text

log = logging.getLogger("damoc")

# Stages of the DaMoC selection not implemented in this version (shown by `damoc select`).
NOT_YET_IMPLEMENTED = (
    "data compression (filtering, key-token compression, rewriting)",
    "model compression (layer importance, pruning, sparse merging)",
    "proxy fine-tuning as Ray Tune trials",
    "evaluation, ranking, baselines and the report",
)


def cache_root(config: RunConfig) -> Path:
    """The stage cache: output.cache_dir, else $DAMOC_CACHE_DIR, else the user cache dir."""
    if config.output.cache_dir:
        return Path(config.output.cache_dir).expanduser()
    return default_cache_root()


def run_select(config: RunConfig) -> dict:
    """Run the implemented stages; write OUTPUT/config.yaml and OUTPUT/run.json."""
    out_dir = Path(config.output.dir)
    started = time.perf_counter()
    data = prepare_data(config.data, cache_root(config))
    data_seconds = time.perf_counter() - started
    stats = inspect_data(data)
    run = {
        "name": config.name,
        "status": "partial",
        "stages": {"data": {**data.summary(), "seconds": round(data_seconds, 3)}},
        "data_stats": stats,
        "candidates": [c.display_name for c in config.candidates],
        "not_yet_implemented": list(NOT_YET_IMPLEMENTED),
    }
    write_text(out_dir / "config.yaml", config_to_yaml(config))
    write_json(out_dir / "run.json", run)
    run["data_table"] = format_inspection(stats)
    return run

"""The data-compression stage: filter rows (and later compress tokens and rewrite).

Implemented here: the `none` and `random` filters (a seeded sample of `keep_ratio` of the training
rows). The nine DaMoC filters, key-token compression and BERTScore-gated rewriting are refused
before a run starts (damoc.pipeline.check_supported) until they exist.
"""

from __future__ import annotations

import hashlib
import time

from damoc.config.schema import DataCompressionConfig
from damoc.data.load import LoadedData

FILTERS = {"none": "keep every row", "random": "a seeded uniform sample of keep_ratio of the training rows"}


def compress_data(data: LoadedData, cfg: DataCompressionConfig, seed: int = 0) -> tuple[LoadedData, dict]:
    """Compress the training split; validation and test are never touched."""
    started = time.perf_counter()
    train = data.splits["train"]
    method = cfg.filter.method
    if method == "none" or cfg.filter.keep_ratio >= 1.0:
        kept = list(train)
    elif method == "random":
        n = max(1, round(len(train) * cfg.filter.keep_ratio))
        key = lambda r: hashlib.sha256(f"{seed}:{r['id']}".encode()).hexdigest()  # noqa: E731
        keep = {r["id"] for r in sorted(train, key=key)[:n]}
        kept = [r for r in train if r["id"] in keep]
    else:
        raise NotImplementedError(f"filter '{method}' is not implemented in this version")
    splits = dict(data.splits, train=kept)
    out = LoadedData(splits=splits, task_type=data.task_type, format=data.format, source=data.source,
                     carved=data.carved, skipped=data.skipped, fingerprint=data.fingerprint)
    info = {"filter": method, "keep_ratio": cfg.filter.keep_ratio, "rows_in": len(train), "rows_out": len(kept),
            "seconds": round(time.perf_counter() - started, 3)}
    return out, info

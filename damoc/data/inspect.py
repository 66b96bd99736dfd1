"""`damoc data inspect`: row counts, split sizes, label balance and length percentiles."""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

import numpy as np

from damoc.data.load import LoadedData
from damoc.errors import DataError
from damoc.log import progress

PERCENTILES = (50, 90, 99)


def load_tokenizer(path: str, trust_remote_code: bool = False):
    """A tokenizer from a local directory (or a hub id when online); damoc never runs remote code
    unless asked."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code,
                                             local_files_only=os.path.isdir(path) or os.environ.get("HF_HUB_OFFLINE") == "1")
    except Exception as e:  # OSError for missing files, ValueError for unknown tokenizer classes
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"cannot load tokenizer '{path}': {reason}") from e


def inspect_data(data: LoadedData, tokenizer: Any = None) -> dict:
    """Statistics of a loaded dataset. Lengths are tokens of `tokenizer`, else whitespace words."""
    unit = "tokens" if tokenizer is not None else "words"
    stats: dict[str, Any] = {"source": data.source, "format": data.format, "task_type": data.task_type,
                             "length_unit": unit, "rows": sum(len(r) for r in data.splits.values()),
                             "carved_splits": data.carved, "skipped_bad_rows": data.skipped, "splits": {}}
    for split, records in data.splits.items():
        entry: dict[str, Any] = {"rows": len(records)}
        for part in ("prompt", "response"):
            texts = [r[part] for r in records]
            entry[f"{part}_length"] = _percentiles(_lengths(texts, tokenizer, f"{split} {part}s"))
        if data.task_type == "classification":
            entry["labels"] = _label_balance(records)
        stats["splits"][split] = entry
    return stats


def _lengths(texts: list[str], tokenizer: Any, desc: str) -> list[int]:
    if tokenizer is None:
        return [len(t.split()) for t in texts]
    lengths: list[int] = []
    batch = 512
    for start in progress(range(0, len(texts), batch), desc=f"tokenizing {desc}", unit="batch"):
        encoded = tokenizer(texts[start:start + batch], add_special_tokens=False)["input_ids"]
        lengths.extend(len(ids) for ids in encoded)
    return lengths


def _percentiles(lengths: list[int]) -> dict[str, float]:
    if not lengths:
        return {}
    values = np.asarray(lengths)
    out = {f"p{p}": float(np.percentile(values, p)) for p in PERCENTILES}
    out.update(mean=round(float(values.mean()), 1), max=int(values.max()))
    return out


def _label_balance(records: list[dict]) -> dict[str, dict[str, float]]:
    counts = Counter(r["response"] if r["choices"] is None else r["choices"][r["label"]] for r in records)
    total = sum(counts.values())
    return {label: {"count": n, "fraction": round(n / total, 4)} for label, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))}


def format_inspection(stats: dict) -> str:
    """The human-readable table printed by `damoc data inspect`."""
    unit = stats["length_unit"]
    lines = [f"source: {stats['source']}", f"format: {stats['format']}    task: {stats['task_type']}    rows: {stats['rows']}"]
    if stats["carved_splits"]:
        lines.append(f"carved from train: {', '.join(stats['carved_splits'])}")
    if stats["skipped_bad_rows"]:
        lines.append("skipped bad rows: " + ", ".join(f"{s} {n}" for s, n in stats["skipped_bad_rows"].items()))
    lines.append("")
    header = f"{'split':<11}{'rows':>8}   {'prompt ' + unit + ' p50/p90/p99/max':<34}{'response ' + unit + ' p50/p90/p99/max'}"
    lines.append(header)
    for split, entry in stats["splits"].items():
        lines.append(f"{split:<11}{entry['rows']:>8}   {_fmt(entry['prompt_length']):<34}{_fmt(entry['response_length'])}")
    if stats["task_type"] == "classification":
        lines.append("")
        lines.append("label balance (count, share):")
        for split, entry in stats["splits"].items():
            parts = [f"{label} {v['count']} ({v['fraction']:.1%})" for label, v in entry["labels"].items()]
            lines.append(f"  {split:<11}" + ", ".join(parts))
    return "\n".join(lines)


def _fmt(p: dict) -> str:
    if not p:
        return "-"
    return f"{p['p50']:.0f}/{p['p90']:.0f}/{p['p99']:.0f}/{p['max']}"


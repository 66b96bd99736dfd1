"""Load a dataset into canonical records with train/validation/test splits.

    source (file | directory | save_to_disk dir | HF dataset id | bundled:<task> | split -> file)
      -> raw rows per split -> format adapter -> records -> carve missing splits -> caps

`load_data` is the plain function; `prepare_data` wraps it in the stage cache (one directory of
canonical JSONL per fingerprint) so later stages and re-runs read the converted records.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

from damoc import fingerprint as fp
from damoc.config.schema import SPLITS, DataConfig
from damoc.data.formats import FORMATS, RowContext, detect_format
from damoc.data.readers import BadRow, file_kind, read_rows
from damoc.data.records import Record, RowError
from damoc.errors import DataError
from damoc.io import atomic_dir, write_jsonl
from damoc.log import progress
from damoc.tasks import DATA_DIR as TASKS_DATA_DIR

log = logging.getLogger("damoc.data")

STAGE = "data"
STAGE_VERSION = 1
SPLIT_ALIASES = {"train": ("train", "training"), "validation": ("validation", "valid", "val", "dev"),
                 "test": ("test", "testing")}
BUNDLED_DIR = TASKS_DATA_DIR
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass
class SplitSource:
    """Where one split's raw rows come from."""

    split: str
    label: str                                  # shown in messages: a path, or hf:id[split]
    rows: Callable[[Optional[Callable[[BadRow], None]]], Iterator[tuple[int, dict]]]
    digest: Callable[[], str]                   # content digest for fingerprints


@dataclass
class LoadedData:
    splits: dict[str, list[Record]]
    task_type: str                              # classification | generation
    format: str
    source: str
    carved: list[str] = field(default_factory=list)    # splits carved out of train
    skipped: dict[str, int] = field(default_factory=dict)  # bad rows skipped per split
    fingerprint: Optional[str] = None

    def summary(self) -> dict:
        return {"source": self.source, "format": self.format, "task_type": self.task_type,
                "rows": {s: len(r) for s, r in self.splits.items()}, "carved": self.carved,
                "skipped_bad_rows": self.skipped, "fingerprint": self.fingerprint}


# ------------------------------------------------------------------------------- sources
def bundled_tasks() -> list[str]:
    return sorted(p.name for p in BUNDLED_DIR.iterdir() if p.is_dir()) if BUNDLED_DIR.is_dir() else []


def resolve_source(cfg: DataConfig) -> list[SplitSource]:
    source = cfg.source
    if isinstance(source, dict):
        return [_file_source(split, Path(path)) for split, path in source.items()]
    if source.startswith("bundled:"):
        name = source.split(":", 1)[1]
        directory = BUNDLED_DIR / name
        if not directory.is_dir():
            raise DataError(f"no bundled task '{name}' (bundled tasks: {', '.join(bundled_tasks()) or 'none'})")
        return _directory_sources(directory, cfg)
    path = Path(source).expanduser()
    if path.is_file():
        return [_file_source("train", path)]
    if path.is_dir():
        return _directory_sources(path, cfg)
    if _looks_like_path(source):
        raise DataError(f"data file not found: {source}")
    if _HUB_ID.match(source):
        return _hub_sources(source, cfg)
    raise DataError(f"data.source '{source}' is neither an existing file or directory nor a Hugging Face dataset id")


def _looks_like_path(source: str) -> bool:
    return (source.startswith((".", "/", "~")) or os.sep in source and Path(source.split(os.sep)[0]).exists()
            or file_kind(source) is not None)


def _file_source(split: str, path: Path) -> SplitSource:
    if not path.is_file():
        raise DataError(f"data file not found: {path}" + (f" (for split '{split}')" if split != "train" else ""))
    if file_kind(path) is None:
        raise DataError(f"unsupported data file type: {path} (expected .jsonl, .json, .csv, .tsv or .parquet, optionally .gz)")
    return SplitSource(split, str(path), lambda on_bad: read_rows(path, on_bad), lambda: fp.file_digest(path))


def _directory_sources(directory: Path, cfg: DataConfig) -> list[SplitSource]:
    if (directory / "dataset_dict.json").exists() or (directory / "state.json").exists():
        return _saved_dataset_sources(directory, cfg)
    files = sorted(p for p in directory.iterdir() if p.is_file() and file_kind(p))
    if not files:
        raise DataError(f"no data files in {directory} (expected train/validation/test .jsonl, .json, .csv or .parquet)")
    found: dict[str, Path] = {}
    for split in SPLITS:
        names = {getattr(cfg.splits, split), *SPLIT_ALIASES[split]}
        matches = [p for p in files if _stem(p) in names]
        if len(matches) > 1:
            raise DataError(f"{directory}: several files for split '{split}': {', '.join(p.name for p in matches)}")
        if matches:
            found[split] = matches[0]
    if not found:
        if len(files) == 1:
            found["train"] = files[0]
        else:
            raise DataError(f"{directory}: cannot tell which file is which split ({', '.join(p.name for p in files)}); name them train/validation/test or set data.source as a mapping split -> file")
    if "train" not in found:
        raise DataError(f"{directory}: no training file (expected train.jsonl or similar)")
    return [_file_source(split, path) for split, path in found.items()]


def _stem(path: Path) -> str:
    name = path.name.lower()
    return name.split(".", 1)[0]


def _dataset_rows(dataset) -> Callable:
    def rows(on_bad):
        for i, row in enumerate(dataset, start=1):
            yield i, row
    return rows


def _split_map(available: list[str], cfg: DataConfig) -> dict[str, str]:
    """canonical split -> the source's split name."""
    out = {}
    for split in SPLITS:
        names = [getattr(cfg.splits, split), *SPLIT_ALIASES[split]]
        match = next((n for n in names if n in available), None)
        if match:
            out[split] = match
    return out


def _saved_dataset_sources(directory: Path, cfg: DataConfig) -> list[SplitSource]:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(directory))
    except Exception as e:  # datasets raises several types for a broken directory
        raise DataError(f"cannot load the saved dataset in {directory}: {e}") from e
    if isinstance(loaded, datasets.Dataset):
        loaded = datasets.DatasetDict({"train": loaded})
    return _dataset_dict_sources(loaded, str(directory), cfg)


def _dataset_dict_sources(loaded, label: str, cfg: DataConfig) -> list[SplitSource]:
    mapping = _split_map(list(loaded.keys()), cfg)
    if "train" not in mapping:
        raise DataError(f"{label}: no training split (splits: {', '.join(loaded.keys())}); set data.splits.train")
    return [SplitSource(split, f"{label}[{name}]", _dataset_rows(loaded[name]),
                        (lambda d=loaded[name]: d._fingerprint)) for split, name in mapping.items()]


def _hub_sources(dataset_id: str, cfg: DataConfig) -> list[SplitSource]:
    import datasets

    subset = f" (subset '{cfg.subset}')" if cfg.subset else ""
    try:
        loaded = datasets.load_dataset(dataset_id, name=cfg.subset, revision=cfg.revision)
    except Exception as e:  # connection, missing dataset, bad subset: all end here
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1" or isinstance(e, ConnectionError)
        hint = (" This machine looks offline: fetch it where there is network"
                f" (datasets.load_dataset('{dataset_id}').save_to_disk(DIR), or export splits to JSONL)"
                " and set data.source to that directory or file." if offline else "")
        raise DataError(f"cannot load Hugging Face dataset '{dataset_id}'{subset}: {reason}.{hint}") from e
    return _dataset_dict_sources(loaded, f"hf:{dataset_id}", cfg)


# ------------------------------------------------------------------------------- loading
def load_data(cfg: DataConfig, *, sources: Optional[list[SplitSource]] = None) -> LoadedData:
    """Read, convert and split the dataset described by `cfg` (no caching)."""
    sources = sources if sources is not None else resolve_source(cfg)
    splits: dict[str, list[Record]] = {}
    skipped: dict[str, int] = {}
    format_name = cfg.format
    for src in sources:
        records, bad, format_name = _convert_split(src, cfg, format_name)
        if bad:
            skipped[src.split] = bad
        splits[src.split] = records
    if not splits.get("train"):
        raise DataError(f"dataset is empty: no usable rows in the training split of {sources[0].label if len(sources) == 1 else cfg.source}")
    carved = _carve_missing_splits(splits, cfg)
    for split in SPLITS:
        if not splits.get(split):
            raise DataError(f"dataset split '{split}' is empty ({cfg.source})")
    _apply_limits(splits, cfg)
    return LoadedData(splits=splits, task_type=_task_type(splits, cfg), format=format_name,
                      source=str(cfg.source), carved=carved, skipped=skipped)


def _convert_split(src: SplitSource, cfg: DataConfig, format_name: str) -> tuple[list[Record], int, str]:
    records: list[Record] = []
    bad: list[str] = []

    def on_bad(row: BadRow) -> None:
        bad.append(f"row {row.row_number}: {row.message}")

    policy = on_bad if cfg.on_bad_rows == "skip" else None
    converter = None
    seen: dict[str, int] = {}
    for row_number, row in progress(src.rows(policy), desc=f"reading {src.split}", unit="rows"):
        if converter is None:
            if format_name == "auto":
                format_name = detect_format(set(row)) or ""
                if not format_name:
                    raise DataError(f"{src.label}: cannot detect the data format from the columns ({', '.join(sorted(row))}); set data.format to one of {', '.join(f for f in FORMATS if f != 'columns')}, or map columns with data.format: columns and data.columns")
                log.debug("detected format %s for %s", format_name, src.label)
            converter = FORMATS[format_name].convert
        ctx = RowContext(default_id=f"{src.split}-{row_number}", columns=cfg.columns)
        try:
            record = converter(row, ctx)
        except RowError as e:
            message = f"row {row_number}: field '{e.field}': {e.message}"
            if cfg.on_bad_rows == "error":
                raise DataError(f"{src.label}: {message}") from e
            bad.append(message)
            continue
        record["meta"].setdefault("source_row", row_number)
        # Ids must be unique: splitting and caching key on them.
        if record["id"] in seen:
            seen[record["id"]] += 1
            record["id"] = f"{record['id']}#{seen[record['id']]}"
        else:
            seen[record["id"]] = 0
        records.append(record)
    if bad:
        log.warning("%s: skipped %d bad row%s (first: %s)", src.label, len(bad), "s" if len(bad) > 1 else "", bad[0])
    return records, len(bad), format_name or cfg.format


def _order_key(seed: int, record_id: str) -> str:
    return hashlib.sha256(f"{seed}:{record_id}".encode()).hexdigest()


def _count(size: float, n: int) -> int:
    return int(size) if size >= 1 else max(1, round(size * n))


def _carve_missing_splits(splits: dict[str, list[Record]], cfg: DataConfig) -> list[str]:
    """Take missing validation/test splits out of train, by a seeded hash of the row id (stable
    when rows are added or reordered)."""
    missing = [s for s in ("validation", "test") if s not in splits]
    if not missing:
        return []
    train = sorted(splits["train"], key=lambda r: _order_key(cfg.split_seed, r["id"]))
    n = len(train)
    sizes = {s: _count(getattr(cfg, f"{s}_size"), n) for s in missing}
    if sum(sizes.values()) >= n:
        raise DataError(f"dataset has {n} training rows: too few to carve {' and '.join(f'{s} ({k})' for s, k in sizes.items())}; provide those splits or lower data.validation_size / data.test_size")
    start = 0
    for split in missing:
        splits[split] = train[start:start + sizes[split]]
        start += sizes[split]
    carved_ids = {r["id"] for s in missing for r in splits[s]}
    splits["train"] = [r for r in splits["train"] if r["id"] not in carved_ids]
    return missing


def _apply_limits(splits: dict[str, list[Record]], cfg: DataConfig) -> None:
    for split in SPLITS:
        limit = getattr(cfg.max_rows, split)
        if limit is not None and len(splits[split]) > limit:
            chosen = sorted(splits[split], key=lambda r: _order_key(cfg.split_seed + 1, r["id"]))[:limit]
            keep = {r["id"] for r in chosen}
            splits[split] = [r for r in splits[split] if r["id"] in keep]


def _task_type(splits: dict[str, list[Record]], cfg: DataConfig) -> str:
    with_choices = sum(1 for rows in splits.values() for r in rows if r["choices"] is not None)
    total = sum(len(rows) for rows in splits.values())
    inferred = "classification" if with_choices == total else "generation" if with_choices == 0 else "mixed"
    if inferred == "mixed":
        raise DataError(f"{cfg.source}: {with_choices} of {total} rows have choices and the rest do not; a dataset must be all classification or all generation")
    if cfg.task != "auto" and cfg.task != inferred:
        if cfg.task == "classification":
            raise DataError(f"data.task is classification but the rows of {cfg.source} have no choices/label")
        return "generation"  # classification rows can always be trained and scored as text
    return inferred


# ------------------------------------------------------------------------------- the stage
def data_fingerprint(cfg: DataConfig, sources: list[SplitSource]) -> str:
    """Content, not location: the same files read from another checkout, a moved folder or through a
    relative path are the same data. Every later stage's key (trials included) hangs off this one, so
    a path in it would re-train every candidate after a `git clone` or a `mv`."""
    settings = cfg.model_dump(mode="json", by_alias=True, exclude={"source"})
    return fp.fingerprint(STAGE, settings, {s.split: s.digest() for s in sources}, stage_version=STAGE_VERSION)


def prepare_data(cfg: DataConfig, cache_root: str | os.PathLike) -> LoadedData:
    """load_data, cached under CACHE/data/<fingerprint>/ as canonical JSONL per split."""
    sources = resolve_source(cfg)
    key = data_fingerprint(cfg, sources)
    entry = fp.stage_dir(cache_root, STAGE, key)
    if fp.is_done(entry):
        summary = fp.read_summary(entry)
        log.info("data: cached %s (%s)", key, ", ".join(f"{s} {n}" for s, n in summary["rows"].items()))
        splits = {s: read_canonical(entry / f"{s}.jsonl") for s in SPLITS}
        return LoadedData(splits=splits, task_type=summary["task_type"], format=summary["format"],
                          source=str(cfg.source), carved=summary["carved"],
                          skipped=summary["skipped_bad_rows"], fingerprint=key)
    started = time.perf_counter()
    data = load_data(cfg, sources=sources)
    data.fingerprint = key
    with atomic_dir(entry) as tmp:
        for split, records in data.splits.items():
            write_jsonl(tmp / f"{split}.jsonl", records)
        fp.write_summary(tmp, {**data.summary(), "seconds": round(time.perf_counter() - started, 3)})
    log.info("data: %s rows from %s (%s format, %s)", sum(len(r) for r in data.splits.values()),
             data.source, data.format, data.task_type)
    return data


def read_canonical(path: str | os.PathLike) -> list[Record]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


"""Data stage: load any supported dataset into canonical records (later: filter, compress, rewrite)."""

from damoc.data.formats import FORMATS, detect_format
from damoc.data.load import LoadedData, bundled_tasks, load_data, prepare_data, read_canonical, resolve_source
from damoc.data.records import FIELDS, Record, RowError, make_record

__all__ = ["FIELDS", "FORMATS", "LoadedData", "Record", "RowError", "bundled_tasks", "detect_format",
           "load_data", "make_record", "prepare_data", "read_canonical", "resolve_source"]

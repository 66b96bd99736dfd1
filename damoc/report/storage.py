"""The report, copied to the run's Ray storage (`cluster.storage_path`): on a cluster the driver's
`output.dir` is a directory on one node (often a pod that is gone once the job ends), while the
storage path is what every user of the cluster can read (s3://, gs://, NFS).

pyarrow's filesystems do the writing, as Ray Train and Tune do for the same storage path, so any URI
those accept works here. A local (or NFS) destination is written to a temporary sibling and renamed
into place; object stores have no directory rename, so there every file is put whole (a put is
atomic per object) and report.json goes last: whoever sees it sees a complete report.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

# What `write_report` leaves in output.dir that belongs to the report (not Ray's trial files).
REPORT_FILES = ("report.md", "config.yaml", "curves.png", "proxy_vs_truth.png", "fitted_curves.png", "curve_table.csv")
REPORT_DIRS = ("winner",)


def report_uri(storage_path: str, run: str) -> str:
    """Where the report of run `run` goes under `storage_path` (a directory URI or path)."""
    base = storage_path if "://" in storage_path else str(Path(storage_path).expanduser().resolve())
    return f"{base.rstrip('/')}/{run}-report"


def publish_report(out_dir: Path, storage_path: str, run: str) -> str:
    """Copy the report in `out_dir` to `report_uri(storage_path, run)`; returns that URI."""
    import pyarrow.fs as pafs

    dest = report_uri(storage_path, run)
    files = [name for name in REPORT_FILES if (out_dir / name).is_file()]
    for folder in REPORT_DIRS:
        files += sorted(p.relative_to(out_dir).as_posix() for p in (out_dir / folder).rglob("*") if p.is_file())
    files.append("report.json")   # last: its presence means the rest is there
    if "://" not in storage_path:
        fs, root = pafs.LocalFileSystem(), dest
        staging = f"{root}.tmp-{secrets.token_hex(4)}"
        try:
            _put(fs, out_dir, staging, files)
            if fs.get_file_info(root).type != pafs.FileType.NotFound:
                old = f"{root}.old-{os.getpid()}"
                fs.move(root, old)
                fs.move(staging, root)
                fs.delete_dir(old)
            else:
                fs.move(staging, root)
        finally:
            if fs.get_file_info(staging).type != pafs.FileType.NotFound:
                fs.delete_dir(staging)
    else:
        fs, root = pafs.FileSystem.from_uri(dest)
        _put(fs, out_dir, root, files)
    return dest


def _put(fs, out_dir: Path, root: str, files: list[str]) -> None:
    fs.create_dir(root, recursive=True)
    for name in files:
        parent = os.path.dirname(name)
        if parent:
            fs.create_dir(f"{root}/{parent}", recursive=True)
        with fs.open_output_stream(f"{root}/{name}") as stream:
            stream.write((out_dir / name).read_bytes())

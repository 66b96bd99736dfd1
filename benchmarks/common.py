"""What every benchmark result records: the git commit and the machine it ran on."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]


def git_commit() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
        return commit + ("+uncommitted" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> dict:
    import torch

    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        memory = None
    from damoc.fingerprint import arithmetic_platform

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    cpu = arithmetic_platform()
    return {"cpus": os.cpu_count(), "memory_gib": round(memory, 1) if memory else None, "gpu": gpu,
            "cpu": cpu["cpu"], "cpu_capability": cpu["cpu_capability"],
            "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__}


def per_demo_candidate(measure: Callable[[Path], dict], out: Path, config: dict) -> int:
    """`measure(model_dir)` for each demo-zoo candidate in turn, on one thread (so that candidates
    compare), each row printed as it comes; then the rows, config, commit and machine to `out`."""
    import torch

    from damoc.io import write_text
    from damoc.zoo.build import build_zoo
    from damoc.zoo.specs import DEMO

    torch.set_num_threads(1)
    torch.manual_seed(0)
    zoo = build_zoo("demo")
    started = time.perf_counter()
    rows = {}
    for spec in DEMO:
        rows[spec.name] = measure(zoo / spec.name)
        print(spec.name, json.dumps(rows[spec.name]), flush=True)
    payload = {"commit": git_commit(), "machine": machine(), "seconds": round(time.perf_counter() - started, 1),
               "config": config, "results": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out, json.dumps(payload, indent=2) + "\n")  # temp file, then rename
    print(f"wrote {out}")
    return 0

"""Where the data stage's scorers run: `data_compression.engine` ray_data, local or auto.

For each bundled task, the data stage of `jobs/demo.yaml` (a seeded random twentieth of the
training rows, each prompt key-token compressed to half its tokens under SmolLM2-135M-Instruct)
runs as `damoc data compress` in a fresh process on an empty stage cache (only the imported scorer
model linked in), once per engine and repetition, the engines alternating so that the machine's
drift hits each alike. Each run records the stage's own seconds (`stats.json` seconds.total: what
`damoc select` and rank_fidelity.py charge to data compression, Ray's own start-up not included),
the process's wall time (Ray's start-up included where the engine starts it), where `auto` ran its
maps, and the sha256 of the compressed training rows: every engine must write the same rows.

    python benchmarks/engine_choice.py              # both tasks, 2 repetitions (about 6 min on 2 cores)
    python benchmarks/engine_choice.py --reps 1 --tasks wordnet-defgen

Results: benchmarks/results/engine_choice.json (commit and machine recorded).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, git_commit, machine  # noqa: E402

ENGINES = ("ray_data", "auto", "local")
# The rank-fidelity benchmark caps defgen's training rows at its first 4,000 (rank_fidelity.PROFILES).
TASKS = {"wordnet-lexcat": [], "wordnet-defgen": ["data.max_rows.train=4000"]}


def scorer_models(cache: Path) -> Path:
    """The cache's `models` directory with SmolLM2 imported (on first use, as the stage does)."""
    from damoc.data.lm import resolve_scorer_path

    resolve_scorer_path(None, cache)
    return cache / "models"


def one_run(task: str, engine: str, models: Path, work: Path) -> dict:
    cache, out = work / "cache", work / "out"
    cache.mkdir(parents=True)
    (cache / "models").symlink_to(models, target_is_directory=True)
    command = [sys.executable, "-m", "damoc", "-q", "data", "compress", str(ROOT / "jobs" / "demo.yaml"),
               f"data.source=bundled:{task}", *TASKS[task], f"data_compression.engine={engine}", f"output.dir={out}"]
    env = {**os.environ, "DAMOC_CACHE_DIR": str(cache)}
    env.pop("RAY_ADDRESS", None)        # this machine's own Ray, as `make demo` runs
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    stats = json.loads((out / "data" / "stats.json").read_text())
    return {"task": task, "engine": engine, "ran_on": stats["engine"], "rows_in": stats["rows_in"],
            "rows_out": stats["rows_out"], "stage_s": stats["seconds"]["total"],
            "token_compression_s": stats["seconds"].get("tokens"), "process_wall_s": round(wall, 2),
            "train_sha256": hashlib.sha256((out / "data" / "train.parquet").read_bytes()).hexdigest()}


def summary(runs: list[dict]) -> dict:
    """Per task and engine: the fastest stage and process times (the machine's drift only slows
    runs down), and whether every engine wrote the same rows."""
    out = {}
    for task in dict.fromkeys(r["task"] for r in runs):
        mine = [r for r in runs if r["task"] == task]
        out[task] = {"same_rows_on_every_engine": len({r["train_sha256"] for r in mine}) == 1,
                     "engines": {e: {"stage_s_fastest": min(r["stage_s"] for r in mine if r["engine"] == e),
                                     "process_wall_s_fastest": min(r["process_wall_s"] for r in mine if r["engine"] == e),
                                     "ran_on": sorted({r["ran_on"] for r in mine if r["engine"] == e})}
                                 for e in ENGINES if any(r["engine"] == e for r in mine)}}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated bundled tasks")
    parser.add_argument("--reps", type=int, default=2, help="repetitions per task and engine")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "engine_choice.json"))
    args = parser.parse_args(argv)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or args.reps < 1:
        print(f"engine_choice: unknown task {unknown[0]!r} (bundled: {', '.join(TASKS)})" if unknown
              else f"engine_choice: --reps must be at least 1, not {args.reps}", file=sys.stderr)
        return 2
    from damoc.fingerprint import default_cache_root
    from damoc.io import write_text

    models = scorer_models(default_cache_root())
    started = time.perf_counter()
    runs = []
    scratch = Path(tempfile.mkdtemp(prefix="damoc-engine-choice-"))
    try:
        for rep in range(args.reps):
            for task in tasks:
                for engine in ENGINES:
                    row = {**one_run(task, engine, models, scratch / f"{task}-{engine}-{rep}"), "repetition": rep}
                    runs.append(row)
                    print(json.dumps(row), flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    payload = {"commit": git_commit(), "machine": machine(), "seconds": round(time.perf_counter() - started, 1),
               "config": {"job": "jobs/demo.yaml", "tasks": tasks, "reps": args.reps, "engines": list(ENGINES)},
               "summary": summary(runs), "runs": runs}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out, json.dumps(payload, indent=2) + "\n")     # temp file, then rename
    print(json.dumps(payload["summary"], indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

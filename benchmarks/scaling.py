"""Selection wall time vs number of candidates and number of Ray nodes, through `damoc submit`.

For every (nodes, candidates) pair the script submits jobs/micro.yaml with the first N micro-zoo
candidates as a Ray job and waits for it. Successive halving is off (every candidate trains its
full budget, so the time measures trials, not which ones ASHA happened to stop), every run gets a
fresh training seed (so no trial comes from the cache, while the zoo is reused), and on local
nodes `max_concurrent_trials` is the node count (one CPU per node: one trial per node at a time).

Two ways to get nodes:

    python benchmarks/scaling.py                                  # 1 and 2 local nodes x 2, 4, 6 candidates
    python benchmarks/scaling.py --nodes 1 --candidates 2         # the smallest setting (a smoke test)
    python benchmarks/scaling.py --address http://HEAD:8265 --cache-dir /shared/damoc-cache \\
        --out-dir /shared/damoc-runs                              # a real cluster, as it is

Local nodes are started like tests/test_cluster.py's (damoc.submit.LocalCluster: `ray start`
per node with 1 CPU, own temp dir and ports, token auth; stopped by killing their own processes).
On a real cluster --cache-dir and --out-dir must be paths every node mounts; the first job there
builds the micro zoo and is not counted.

Results: benchmarks/results/scaling.json ({"commit", "machine", "settings", "results": [...]}).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, git_commit, machine  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CONFIG = ROOT / "jobs" / "micro.yaml"


def micro_candidates() -> list[str]:
    import yaml

    return yaml.safe_load(CONFIG.read_text())["candidates"]


def run_job(address: str, n_candidates: int, *, cache: Path, out: Path, seed: int, concurrent: int | None,
            timeout: float) -> dict:
    """One selection as a Ray job; its wall times from Ray and from the report."""
    from damoc import submit as sub

    names = micro_candidates()[:n_candidates]
    overrides = [f"candidates=[{', '.join(names)}]", f"output.dir={out}", f"output.cache_dir={cache}",
                 f"cluster.storage_path={out}-ray", "cluster.shared_storage=true", f"training.seed={seed}",
                 "ranking.early_stopping.scheduler=none"]
    if concurrent:
        overrides.append(f"cluster.max_concurrent_trials={concurrent}")
    started = time.perf_counter()
    submission = sub.submit(str(CONFIG), overrides, address=address)
    job = sub.wait(submission.client, submission.info, submission.submission_id, timeout=timeout)
    wall = time.perf_counter() - started
    row = {"candidates": n_candidates, "job_id": submission.submission_id, "status": str(job.status),
           "submit_to_end_s": round(wall, 2)}
    if job.start_time and job.end_time:
        row["job_s"] = round((job.end_time - job.start_time) / 1000, 2)
    report_path = out / "report.json"
    if str(job.status) == "SUCCEEDED" and report_path.is_file():
        report = json.loads(report_path.read_text())
        row["stage_s"] = report["cost"]["wall_s"]
        row["statuses"] = {c["name"]: c["status"] for c in report["candidates"]}
        row["nodes_used"] = len({c["node_id"] for c in report["candidates"] if c["node_id"]})
    else:
        row["message"] = (job.message or "")[:500]
    return row


def local_series(node_counts: list[int], candidate_counts: list[int], work: Path, cache: Path,
                 timeout: float) -> list[dict]:
    from damoc.submit import LocalCluster

    rows = []
    seed = 1000
    for nodes in node_counts:
        root = Path(tempfile.mkdtemp(prefix="dcb", dir="/tmp"))  # short: Ray's socket paths
        cluster = LocalCluster(root, cpus_per_node=1, env={"DAMOC_CACHE_DIR": str(cache)})
        try:
            t = time.perf_counter()
            cluster.start(nodes, timeout=180)
            startup = time.perf_counter() - t
            os.environ["RAY_AUTH_TOKEN"] = cluster.token
            for n in candidate_counts:
                seed += 1
                row = run_job(cluster.address, n, cache=cache, out=work / f"n{nodes}-c{n}", seed=seed,
                              concurrent=nodes, timeout=timeout)
                row.update(nodes=nodes, cluster="local", cluster_start_s=round(startup, 2))
                print(json.dumps(row), flush=True)
                rows.append(row)
        finally:
            cluster.stop()
            shutil.rmtree(root, ignore_errors=True)
    return rows


def remote_series(address: str, candidate_counts: list[int], cache: Path, out_dir: Path, timeout: float) -> list[dict]:
    from damoc import submit as sub

    nodes = len(sub.connect(address).nodes)
    warm = run_job(address, 1, cache=cache, out=out_dir / "warm-up", seed=999, concurrent=None, timeout=timeout)
    print(json.dumps({"warm_up": warm}), flush=True)
    rows = []
    for i, n in enumerate(candidate_counts):
        row = run_job(address, n, cache=cache, out=out_dir / f"c{n}", seed=2000 + i, concurrent=None, timeout=timeout)
        row.update(nodes=nodes, cluster=address)
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidates", type=int, nargs="+", default=[2, 4, 6], help="candidate counts (max 6)")
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 2], help="local node counts (1 CPU each)")
    parser.add_argument("--address", help="use this cluster's dashboard as it is instead of local nodes")
    parser.add_argument("--cache-dir", type=Path, help="stage cache (a shared path on a real cluster)")
    parser.add_argument("--out-dir", type=Path, help="where the runs' reports go (a shared path on a real cluster)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds to wait for one job")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "scaling.json")
    args = parser.parse_args()
    if max(args.candidates) > len(micro_candidates()) or min(args.candidates) < 1:
        parser.error(f"--candidates must be within 1..{len(micro_candidates())}")

    started = time.perf_counter()
    if args.address:
        if not (args.cache_dir and args.out_dir):
            parser.error("--address needs --cache-dir and --out-dir (paths every node mounts)")
        rows = remote_series(args.address, args.candidates, args.cache_dir, args.out_dir, args.timeout)
    else:
        from damoc.zoo.build import build_zoo

        work = args.out_dir or Path(tempfile.mkdtemp(prefix="damoc-scaling-", dir=ROOT / "runs"
                                                     if (ROOT / "runs").is_dir() else None))
        cache = args.cache_dir or work / "cache"
        build_zoo("micro", cache_root=cache, workers=2)  # once, outside the timings
        rows = local_series(args.nodes, args.candidates, work, cache, args.timeout)
    result = {"commit": git_commit(), "machine": machine(),
              "settings": {"config": "jobs/micro.yaml", "scheduler": "none", "cpus_per_node": 1 if not args.address else None,
                           "candidates": args.candidates, "nodes": args.nodes if not args.address else None,
                           "address": args.address},
              "total_s": round(time.perf_counter() - started, 1), "results": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()

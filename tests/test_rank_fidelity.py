"""The rank-fidelity benchmark's --quick mode end to end (micro zoo): the results file has the
published schema. Thresholds are the full benchmark's business, not this test's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIELDS = ("task", "method", "ranking", "spearman", "kendall", "top1_hit", "regret", "compute_ratio",
          "wall_ratio_train", "wall_ratio_end_to_end")
CANDIDATES = ["micro-qwen2-tiny-domain", "micro-llama-deep-domain", "micro-phi3-mixed", "micro-gpt2-jargon"]


def test_quick_benchmark_writes_the_results_schema(micro_zoo, micro_zoo_cache, tmp_path):
    out = tmp_path / "rank_fidelity_quick.json"
    readme_before = (ROOT / "benchmarks" / "README.md").read_text()
    env = {**os.environ, "DAMOC_CACHE_DIR": str(micro_zoo_cache)}
    proc = subprocess.run([sys.executable, "benchmarks/rank_fidelity.py", "--quick", "--cache", str(micro_zoo_cache),
                           "--work", str(tmp_path / "work"), "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    payload = json.loads(out.read_text())
    assert {"commit", "machine", "config", "results", "ground_truth"} <= set(payload)
    assert payload["commit"] and payload["machine"]["cpus"] >= 1 and "memory_gib" in payload["machine"]
    assert set(payload["config"]["tasks"]) == {"wordnet-lexcat", "wordnet-defgen"}

    for task in ("wordnet-lexcat", "wordnet-defgen"):
        rows = [r for r in payload["results"] if r["task"] == task]
        methods = {r["method"] for r in rows}
        assert {"damoc", "data_only", "model_only", "curve", "zero_shot", "few_shot", "size", "sweep"} <= methods
        assert len([r for r in rows if r["method"] == "sweep"]) == 2  # keep 0.25 and 0.5, no pruning
        for r in rows:
            assert set(FIELDS) <= set(r), (task, r["method"])
            assert sorted(r["ranking"]) == sorted(CANDIDATES), r
            assert r["spearman"] is None or -1.0 <= r["spearman"] <= 1.0
            assert r["kendall"] is None or -1.0 <= r["kendall"] <= 1.0
            assert isinstance(r["top1_hit"], bool) and r["regret"] >= 0
            assert r["top1_hit"] == (r["chosen"] == payload["ground_truth"][task]["ranking"][0] == r["ranking"][0])
            assert r["regret"] == 0 if r["top1_hit"] else r["regret"] >= 0
            if r["method"] in ("zero_shot", "few_shot", "size"):
                assert r["compute_ratio"] is None and r["wall_ratio_train"] is None
            else:  # a proxy trains less than full fine-tuning does, and that is what the ratios say
                assert r["compute_ratio"] > 1 and r["wall_ratio_train"] > 0 and r["wall_ratio_end_to_end"] > 0
        truth = payload["ground_truth"][task]
        assert sorted(truth["ranking"]) == sorted(CANDIDATES) and truth["train_flops"] > 0
        damoc = next(r for r in rows if r["method"] == "damoc")
        data_only = next(r for r in rows if r["method"] == "data_only")
        model_only = next(r for r in rows if r["method"] == "model_only")
        # Each ablation drops one of the two compressions and keeps the other as the proxy has it.
        assert (model_only["keep_ratio"], model_only["prune_ratio"]) == (1.0, damoc["prune_ratio"])
        assert (data_only["keep_ratio"], data_only["prune_ratio"]) == (damoc["keep_ratio"], 0.0)
    assert out.with_name("rank_fidelity_quick_scatter.png").read_bytes()[:4] == b"\x89PNG"
    assert out.with_name("rank_fidelity_quick_frontier.png").read_bytes()[:4] == b"\x89PNG"
    assert (ROOT / "benchmarks" / "README.md").read_text() == readme_before  # --quick never rewrites the README

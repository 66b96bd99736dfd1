"""What running a batch's shared prompt prefix once saves (damoc.trials.evaluate).

    python benchmarks/shared_prefix.py               # demo zoo, both bundled tasks (~10 min on 2 cores)

Few-shot rows all start with the same examples (3 by default: ~210 of a lexcat row's ~280 tokens).
Scoring runs those tokens once per batch and each row continues from their KV cache. Per demo-zoo
candidate, one thread, in one process, the two ways alternated so that the machine's drift hits
both alike (median of `--repeats`): the few-shot baseline's scores of `--rows` test rows, as a
trial computes them (`evaluate_records` without generation: classification scores on
wordnet-lexcat, the response loss on wordnet-defgen), with the prefix shared and with every row
run whole. Also records the largest difference between the two ways' scores.
Writes benchmarks/results/shared_prefix.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, per_demo_candidate  # noqa: E402

TASKS = {"wordnet-lexcat": "classification", "wordnet-defgen": "generation"}


def measure(model_dir: Path, splits: dict, shots: int, repeats: int) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import damoc.trials.evaluate as evaluate
    from damoc.trials.prompts import PromptFormat

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    threshold = evaluate.SHARED_PREFIX_MIN_TOKENS
    row: dict = {"params": sum(p.numel() for p in model.parameters())}
    for task, task_type in TASKS.items():
        train, test = splits[task]
        fmt = PromptFormat(tokenizer, few_shot=train[:shots])
        zero = PromptFormat(tokenizer)
        times: dict[str, list[float]] = {"whole": [], "shared": []}
        scores = {}
        for _ in range(repeats):
            for way in ("whole", "shared"):
                evaluate.SHARED_PREFIX_MIN_TOKENS = 10**9 if way == "whole" else threshold
                started = time.perf_counter()
                scores[way] = evaluate.evaluate_records(model, tokenizer, test, task_type, fmt=fmt, generate=False,
                                                        max_length=512)
                times[way].append(time.perf_counter() - started)
        evaluate.SHARED_PREFIX_MIN_TOKENS = threshold
        whole, shared = statistics.median(times["whole"]), statistics.median(times["shared"])
        row[task] = {"context_tokens": round(statistics.mean(len(fmt.context_ids(r)) for r in test), 1),
                     "zero_shot_context_tokens": round(statistics.mean(len(zero.context_ids(r)) for r in test), 1),
                     "score_s_whole": round(whole, 2), "score_s_shared": round(shared, 2),
                     "speedup": round(whole / shared, 2),
                     "max_abs_score_difference": max(abs(scores["whole"][k] - scores["shared"][k])
                                                     for k in scores["whole"] if k not in ("rows", "perplexity"))}
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200, help="test rows scored per task")
    parser.add_argument("--shots", type=int, default=3, help="few-shot examples (ranking.few_shot_k's default)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "shared_prefix.json")
    args = parser.parse_args(argv)

    from damoc.config.schema import DataConfig
    from damoc.data import load_data

    splits = {}
    for task in TASKS:
        data = load_data(DataConfig.model_validate({"source": f"bundled:{task}",
                                                    "max_rows": {"train": args.shots, "test": args.rows}}))
        splits[task] = (data.splits["train"], data.splits["test"])
    return per_demo_candidate(lambda model_dir: measure(model_dir, splits, args.shots, args.repeats), args.out,
                              {"tasks": list(TASKS), "rows": args.rows, "shots": args.shots, "repeats": args.repeats,
                               "threads": 1, "batch_size": 32})

if __name__ == "__main__":
    raise SystemExit(main())

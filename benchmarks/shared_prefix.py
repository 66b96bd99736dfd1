"""What running a batch's shared prompt prefix once saves (damoc.trials.evaluate).

    python benchmarks/shared_prefix.py               # demo zoo, both bundled tasks (~15 min on 2 cores)

Few-shot rows all start with the same examples (3 by default: ~210 of a lexcat row's ~280 tokens).
Scoring runs those tokens once per batch and each row continues from their KV cache. Per demo-zoo
candidate, one thread, in one process, the two ways alternated so that the machine's drift hits
both alike (median of `--repeats`): the few-shot baseline's scores of `--rows` test rows, as a
trial computes them (`evaluate_records` without generation: classification scores on
wordnet-lexcat, the response loss on wordnet-defgen), with the prefix shared and with every row
run whole. Also records the largest difference between the two ways' scores. On wordnet-defgen
it also times the greedy generation of the same rows' answers (48 new tokens at most, batches of
16, as `generate_responses` runs them for ROUGE-L and BERTScore) both ways, and counts the rows
whose answers differ.
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


def both_ways(run, repeats: int) -> tuple[dict[str, float], dict]:
    """`run()` with the prefix shared and with every row whole, alternated `repeats` times so that
    the machine's drift hits both alike. Returns each way's median seconds and last output."""
    import damoc.trials.evaluate as evaluate

    threshold = evaluate.SHARED_PREFIX_MIN_TOKENS
    times: dict[str, list[float]] = {"whole": [], "shared": []}
    outputs = {}
    try:
        for _ in range(repeats):
            for way in ("whole", "shared"):
                evaluate.SHARED_PREFIX_MIN_TOKENS = 10**9 if way == "whole" else threshold
                started = time.perf_counter()
                outputs[way] = run()
                times[way].append(time.perf_counter() - started)
    finally:
        evaluate.SHARED_PREFIX_MIN_TOKENS = threshold
    return {way: statistics.median(t) for way, t in times.items()}, outputs


def measure(model_dir: Path, splits: dict, shots: int, repeats: int) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import damoc.trials.evaluate as evaluate
    from damoc.trials.prompts import PromptFormat

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    row: dict = {"params": sum(p.numel() for p in model.parameters())}
    for task, task_type in TASKS.items():
        train, test = splits[task]
        fmt = PromptFormat(tokenizer, few_shot=train[:shots])
        zero = PromptFormat(tokenizer)
        seconds, scores = both_ways(lambda: evaluate.evaluate_records(model, tokenizer, test, task_type, fmt=fmt,
                                                                      generate=False, max_length=512), repeats)
        row[task] = {"context_tokens": round(statistics.mean(len(fmt.context_ids(r)) for r in test), 1),
                     "zero_shot_context_tokens": round(statistics.mean(len(zero.context_ids(r)) for r in test), 1),
                     "score_s_whole": round(seconds["whole"], 2), "score_s_shared": round(seconds["shared"], 2),
                     "speedup": round(seconds["whole"] / seconds["shared"], 2),
                     "max_abs_score_difference": max(abs(scores["whole"][k] - scores["shared"][k])
                                                     for k in scores["whole"] if k not in ("rows", "perplexity"))}
        if task_type == "generation":
            # Greedy answers of the few-shot baseline, as a trial generates them for ROUGE-L and BERTScore.
            seconds, answers = both_ways(lambda: evaluate.generate_responses(model, tokenizer, test, fmt=fmt), repeats)
            row[task].update({"generate_s_whole": round(seconds["whole"], 2),
                              "generate_s_shared": round(seconds["shared"], 2),
                              "generate_speedup": round(seconds["whole"] / seconds["shared"], 2),
                              "generated_rows_differing": sum(a != b for a, b in zip(answers["whole"], answers["shared"]))})
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

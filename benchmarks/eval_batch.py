"""What the evaluation batch size (`ranking.eval_batch_size`) costs and changes (damoc.trials.evaluate).

    python benchmarks/eval_batch.py                  # demo zoo, wordnet-defgen (~10 min on 2 cores)

A generation trial scores its test rows zero-shot, few-shot and after fine-tuning: the answer loss
(scoring) and greedy answers for ROUGE-L and BERTScore (generating, up to 48 new tokens). Until
the setting existed, scoring ran 32 rows a batch and generating 16. Per demo-zoo candidate, one
thread, in one process, each batch size in turn and the turns repeated (`--repeats`, median) so
that the machine's drift hits every size alike: the seconds of scoring and of generating
`--rows` wordnet-defgen test rows, zero-shot and with `--shots` examples, and what each size
changes against batches of 16: the largest difference of the loss, and the answers that differ.
Writes benchmarks/results/eval_batch.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, per_demo_candidate  # noqa: E402

SIZES = (16, 32, 64)


def measure(model_dir: Path, train: list, test: list, shots: int, repeats: int) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from damoc.trials.evaluate import generate_responses, response_loss
    from damoc.trials.prompts import PromptFormat

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    row: dict = {"params": sum(p.numel() for p in model.parameters())}
    for name, fmt in (("zero_shot", PromptFormat(tokenizer)), ("few_shot", PromptFormat(tokenizer, few_shot=train[:shots]))):
        times = {size: {"score": [], "generate": []} for size in SIZES}
        losses, answers = {}, {}
        for _ in range(repeats):
            for size in SIZES:
                started = time.perf_counter()
                losses[size] = response_loss(model, tokenizer, test, fmt=fmt, batch_size=size, max_length=512)["eval_loss"]
                times[size]["score"].append(time.perf_counter() - started)
                started = time.perf_counter()
                answers[size] = generate_responses(model, tokenizer, test, fmt=fmt, batch_size=size)
                times[size]["generate"].append(time.perf_counter() - started)
        row[name] = {str(size): {"score_s": round(statistics.median(times[size]["score"]), 2),
                                 "generate_s": round(statistics.median(times[size]["generate"]), 2),
                                 "eval_loss_difference": abs(losses[size] - losses[16]),
                                 "answers_differing": sum(a != b for a, b in zip(answers[size], answers[16]))}
                     for size in SIZES}
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200, help="wordnet-defgen test rows (the benchmark's test split)")
    parser.add_argument("--shots", type=int, default=2, help="few-shot examples (jobs/demo.yaml's few_shot_k)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "eval_batch.json")
    args = parser.parse_args(argv)

    from damoc.config.schema import DataConfig
    from damoc.data import load_data

    data = load_data(DataConfig.model_validate({"source": "bundled:wordnet-defgen",
                                                "max_rows": {"train": args.shots, "test": args.rows}}))
    train, test = data.splits["train"], data.splits["test"]
    return per_demo_candidate(lambda model_dir: measure(model_dir, train, test, args.shots, args.repeats), args.out,
                              {"task": "wordnet-defgen", "rows": args.rows, "shots": args.shots, "repeats": args.repeats,
                               "threads": 1, "sizes": list(SIZES)})


if __name__ == "__main__":
    raise SystemExit(main())

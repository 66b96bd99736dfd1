"""What projecting only the positions read onto the vocabulary saves (damoc.trials.logits).

    python benchmarks/kept_logits.py                 # demo zoo, wordnet-lexcat (~5 min on 2 cores)

Per demo-zoo candidate, one thread, in one process, alternating the two ways so that the machine's
drift hits both alike:
- a fine-tuning step (batch 16 of lexcat training rows, loss on the response, AdamW): the loss from
  full logits (`model(**batch).loss`) against the loss from the labelled positions' logits only;
- scoring validation rows the way a rung does (response loss, accuracy and the gold option's
  log-probability): full logits at every position in two passes (response, then options), as
  before, against logits at the positions read, in one pass.
Writes benchmarks/results/kept_logits.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, per_demo_candidate  # noqa: E402


def _full_logits_only(model):
    """The model behind a forward without `logits_to_keep`: damoc's code then takes full logits."""
    import torch

    class FullLogits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner, self.config = model, model.config

        def forward(self, input_ids=None, attention_mask=None, labels=None):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, labels=labels)

    return FullLogits()


def measure(model_dir: Path, train, validation, steps: int, repeats: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from damoc.trials.evaluate import classification_scores, response_loss, score_choices
    from damoc.trials.finetune import IGNORE, build_examples, collate
    from damoc.trials.logits import causal_lm_loss

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    examples = build_examples(tokenizer, train, max_seq_length=256)
    batches = [collate(examples[i:i + 16], tokenizer.pad_token_id) for i in range(0, 16 * steps, 16)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def train_step(kept: bool) -> float:
        model.train()
        started = time.perf_counter()
        for batch in batches:
            loss = causal_lm_loss(model, batch, IGNORE) if kept else model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return (time.perf_counter() - started) / len(batches)

    def score(kept: bool) -> float:
        started = time.perf_counter()
        if kept:
            classification_scores(model, tokenizer, validation)
        else:
            full = _full_logits_only(model)
            response_loss(full, tokenizer, validation)
            score_choices(full, tokenizer, validation)
        return time.perf_counter() - started

    train_step(True)  # warm-up (allocator, first-call overheads)
    times = {"train_full": [], "train_kept": [], "score_full": [], "score_kept": []}
    for _ in range(repeats):
        for kept in (False, True):
            times[f"train_{'kept' if kept else 'full'}"].append(train_step(kept))
            times[f"score_{'kept' if kept else 'full'}"].append(score(kept))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"params": sum(p.numel() for p in model.parameters()), "vocab": model.config.vocab_size,
            "hidden_size": model.config.hidden_size,
            "train_step_s_full": round(med["train_full"], 4), "train_step_s_kept": round(med["train_kept"], 4),
            "train_speedup": round(med["train_full"] / med["train_kept"], 2),
            "score_s_full": round(med["score_full"], 3), "score_s_kept": round(med["score_kept"], 3),
            "score_speedup": round(med["score_full"] / med["score_kept"], 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="fine-tuning steps per timing")
    parser.add_argument("--rows", type=int, default=256, help="validation rows per scoring")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "kept_logits.json")
    args = parser.parse_args(argv)

    from damoc.config.schema import DataConfig
    from damoc.data import load_data

    data = load_data(DataConfig.model_validate({"source": "bundled:wordnet-lexcat",
                                                "max_rows": {"train": 16 * args.steps, "validation": args.rows}}))
    return per_demo_candidate(
        lambda model_dir: measure(model_dir, data.splits["train"], data.splits["validation"], args.steps, args.repeats),
        args.out, {"task": "wordnet-lexcat", "batch_size": 16, "steps": args.steps, "rows": args.rows,
                   "repeats": args.repeats, "threads": 1})

if __name__ == "__main__":
    raise SystemExit(main())

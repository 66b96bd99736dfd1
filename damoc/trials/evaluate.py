"""Scoring a causal LM on canonical records: option log-likelihood for classification, response
loss and generation metrics for generation. Plain functions on (model, tokenizer, records); used by
the zoo (zero-shot scores) and by trials (proxy and baseline scores).

Context and continuation are tokenized separately and concatenated (as lm-evaluation-harness does),
so an option's tokens never merge with the prompt's last token and every option is scored on the
same context ids.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch

from damoc.data.records import Record
from damoc.log import progress


def _context_ids(tokenizer, prompt: str) -> list[int]:
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if tokenizer.bos_token_id is not None:
        ids = [tokenizer.bos_token_id] + ids
    return ids


def _continuation_ids(tokenizer, text: str) -> list[int]:
    # A leading space: the option follows "Answer:" as a new word.
    return tokenizer(" " + text.strip(), add_special_tokens=False)["input_ids"]


@torch.no_grad()
def continuation_logprobs(model, tokenizer, pairs: Sequence[tuple[list[int], list[int]]], *,
                          batch_size: int = 32, max_length: Optional[int] = None, desc: str = "scoring") -> list[tuple[float, int]]:
    """Sum of log p(continuation | context) and the continuation's length, for each pair of id lists.
    Contexts too long for `max_length` are cut from the left (the continuation is always kept)."""
    model.eval()
    device = next(model.parameters()).device
    limit = max_length or getattr(model.config, "max_position_embeddings", None) or 2048
    order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
    results: list[tuple[float, int]] = [(0.0, 0)] * len(pairs)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for start in progress(range(0, len(order), batch_size), desc=desc, unit="batch"):
        batch = [order[i] for i in range(start, min(start + batch_size, len(order)))]
        seqs = []
        for i in batch:
            ctx, cont = pairs[i]
            seq = (ctx + cont)[-limit:]
            seqs.append((seq, min(len(cont), len(seq) - 1)))
        width = max(len(s) for s, _ in seqs)
        input_ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        attention = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, (seq, _) in enumerate(seqs):
            input_ids[row, :len(seq)] = torch.tensor(seq)
            attention[row, :len(seq)] = 1
        logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits.float()
        logprobs = torch.log_softmax(logits, dim=-1)
        for row, (seq, n_cont) in enumerate(seqs):
            positions = torch.arange(len(seq) - n_cont - 1, len(seq) - 1, device=device)
            targets = torch.tensor(seq[len(seq) - n_cont:], device=device)
            total = logprobs[row, positions, targets].sum().item()
            results[batch[row]] = (total, n_cont)
    return results


def score_choices(model, tokenizer, records: Sequence[Record], *, batch_size: int = 32,
                  max_length: Optional[int] = None) -> dict:
    """Accuracy by option log-likelihood (sum over the option's tokens), plus the mean normalised
    log-probability of the gold option among the options (`gold_logprob`; chance = -log(#options)),
    which ranks models even when their accuracy has collapsed to one class."""
    pairs, owners = [], []
    for r_index, record in enumerate(records):
        ctx = _context_ids(tokenizer, record["prompt"])
        for choice in record["choices"]:
            pairs.append((ctx, _continuation_ids(tokenizer, choice)))
            owners.append(r_index)
    scores = continuation_logprobs(model, tokenizer, pairs, batch_size=batch_size, max_length=max_length, desc="scoring options")
    correct, gold_lp = 0, 0.0
    cursor = 0
    for record in records:
        k = len(record["choices"])
        option_scores = np.array([scores[cursor + j][0] for j in range(k)])
        cursor += k
        correct += int(np.argmax(option_scores) == record["label"])
        normalised = option_scores - np.logaddexp.reduce(option_scores)
        gold_lp += float(normalised[record["label"]])
    n = len(records)
    return {"accuracy": correct / n, "gold_logprob": gold_lp / n, "rows": n}


def response_loss(model, tokenizer, records: Sequence[Record], *, batch_size: int = 32,
                  max_length: Optional[int] = None) -> dict:
    """Mean per-token cross-entropy of the response given the prompt (the eval loss)."""
    pairs = [(_context_ids(tokenizer, r["prompt"]), _continuation_ids(tokenizer, r["response"])
              + ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])) for r in records]
    scores = continuation_logprobs(model, tokenizer, pairs, batch_size=batch_size, max_length=max_length, desc="scoring responses")
    total = sum(s for s, _ in scores)
    tokens = sum(n for _, n in scores)
    loss = -total / max(tokens, 1)
    return {"eval_loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": tokens, "rows": len(records)}


@torch.no_grad()
def generate_responses(model, tokenizer, records: Sequence[Record], *, max_new_tokens: int = 48,
                       batch_size: int = 16, stop_at_newline: bool = True) -> list[str]:
    """Greedy continuations of each prompt (left-padded batches), cut at EOS or a newline."""
    model.eval()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    outputs: list[str] = []
    for start in progress(range(0, len(records), batch_size), desc="generating", unit="batch"):
        contexts = [_context_ids(tokenizer, r["prompt"]) for r in records[start:start + batch_size]]
        width = max(len(c) for c in contexts)
        input_ids = torch.full((len(contexts), width), pad, dtype=torch.long)
        attention = torch.zeros_like(input_ids)
        for row, ctx in enumerate(contexts):
            input_ids[row, width - len(ctx):] = torch.tensor(ctx)
            attention[row, width - len(ctx):] = 1
        generated = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                                   max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad,
                                   eos_token_id=tokenizer.eos_token_id)
        for row in generated[:, width:].tolist():
            text = tokenizer.decode(row, skip_special_tokens=True)
            if stop_at_newline:
                text = text.split("\n", 1)[0]
            outputs.append(text.strip())
    return outputs


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F1 (the rouge-score package, with stemming)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    scores = [scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references)]
    return float(np.mean(scores)) if scores else 0.0

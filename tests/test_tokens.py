"""Key-token compression (damoc.data.tokens): selection without a model, then compress_records
with a real micro-zoo scorer on WordNet rows."""

from __future__ import annotations

import copy
import gzip
import itertools
import json
import math
import re

import numpy as np
import pytest

from damoc.data.lm import TokenScores
from damoc.data.tokens import (compress_records, compress_text, forced_units, measure_tokens, select_units,
                               split_units, target_tokens, unit_scores)
from damoc.tasks import DATA_DIR

RATES = (0.3, 0.5, 0.7)


# ------------------------------------------------------------------------------ no model
def word_tokens(text: str, nll: list[float]) -> TokenScores:
    """One 'token' per whitespace-delimited word (leading whitespace included), for tests that
    need a tokenizer without loading one."""
    spans = [m.span() for m in re.finditer(r"\s*\S+", text)]
    assert len(spans) == len(nll)
    return TokenScores(list(range(len(spans))), spans, np.array(nll, dtype=np.float32))


def count_words(texts):
    return [len(t.split()) for t in texts]


def test_target_is_round_half_up_and_at_least_one():
    assert [target_tokens(r, 5) for r in RATES] == [2, 3, 4]       # 1.5, 2.5, 3.5 all round up
    assert target_tokens(0.7, 10) == 7 and target_tokens(0.1, 3) == 1 and target_tokens(0.5, 1) == 1


def test_higher_scored_units_are_kept_first():
    sel = select_units([1] * 6, [0.1, 5.0, 0.2, 4.0, 3.0, 0.3], budget=3)
    assert sel.kept == [1, 3, 4] and sel.prefix is None and sel.tokens == 3


def test_units_that_do_not_fit_are_skipped_for_smaller_ones():
    sel = select_units([4, 1, 1, 2], [9.0, 1.0, 2.0, 8.0], budget=3)
    assert sel.kept == [2, 3] and sel.tokens == 3


def test_a_token_prefix_fills_a_gap_of_two_or_more():
    sel = select_units([5, 5], [1.0, 2.0], budget=3)
    assert sel.kept == [] and sel.prefix == (1, 3) and sel.tokens == 3
    # a gap of one is within tolerance and left alone, unless nothing would be kept at all
    assert select_units([1, 3], [2.0, 1.0], budget=2).prefix is None
    assert select_units([3, 3], [2.0, 1.0], budget=1).prefix == (0, 1)


def test_forced_units_count_toward_the_budget_and_may_exceed_it():
    sel = select_units([2, 2, 2], [1.0, 0.0, 2.0], budget=4, forced=[False, True, False])
    assert sel.kept == [1, 2] and sel.forced_tokens == 2
    sel = select_units([3, 3, 1], [0.0, 0.0, 9.0], budget=2, forced=[True, True, False])
    assert sel.kept == [0, 1] and sel.forced_tokens == 6 and sel.prefix is None


def test_the_opening_unit_is_priced_without_its_leading_space():
    # unit 1 alone would open the text at 3 tokens (over budget); after unit 0 is kept it costs 1
    sel = select_units([1, 1], [0.0, 5.0], budget=2, lead_costs=[1, 3])
    assert sel.kept == [0, 1] and sel.tokens == 2


def test_units_are_words_and_nan_first_tokens_borrow_a_score():
    text = "Hello big world"
    offsets = [(0, 3), (3, 5), (5, 9), (9, 13), (13, 15)]               # Hel|lo| big| wor|ld
    units = split_units(text, offsets)
    assert [text[u.start:u.end] for u in units] == ["Hello", " big", " world"]
    assert [u.tokens for u in units] == [(0, 1), (2,), (3, 4)]
    assert unit_scores(units, np.array([np.nan, 2, 1, 3, 5])).tolist() == [2.0, 1.0, 4.0]
    alone = split_units("Hi there", [(0, 2), (2, 8)])
    assert unit_scores(alone, np.array([np.nan, 1.5])).tolist() == [1.5, 1.5]   # the text's max


def test_force_keep_classes_literals_and_phrases():
    text = "The dose was 20 mg, it wasn't Aspirin and never helped the little red hen at all"
    units = split_units(text, [m.span() for m in re.finditer(r"\s*\S+", text)])
    words = [text[u.word_start:u.word_end] for u in units]

    def kept(*args):
        return {w for w, f in zip(words, forced_units(text, units, *args)) if f}

    assert kept() == {"20", "wasn't", "never"}
    assert kept(["digits"]) == {"20"}
    assert kept(["negations", "aspirin"]) == {"wasn't", "Aspirin", "never"}
    assert kept([], ["Red Hen", "all"]) == {"red", "hen", "all"}          # whole words: not "little"/"helped"
    assert kept([], ["he"]) == set()


def test_the_cue_class_is_a_short_last_line():
    def kept(text):
        units = split_units(text, [m.span() for m in re.finditer(r"\s*\S+", text)])
        return [text[u.word_start:u.word_end] for u, f in zip(units, forced_units(text, units, ["cue"])) if f]

    assert kept("Term: gum\nKind of: resin\nAnswer:") == ["Answer:"]
    assert kept("Translate this\n### Response:\n") == ["###", "Response:"]        # trailing newline
    assert kept("Question: what is it?\nWrite the answer here now") == []     # 5 words: content, not a cue
    assert kept("Answer the question:") == []                                   # one line: no cue
    assert kept("Answer:") == []


def test_the_labels_class_keeps_each_lines_field_label():
    def kept(text):
        units = split_units(text, [m.span() for m in re.finditer(r"\s*\S+", text)])
        return [text[u.word_start:u.word_end] for u, f in zip(units, forced_units(text, units, ["labels"])) if f]

    assert kept("Term: gum\nKind of: resin\nWrite a short definition.\nDefinition:") == [
        "Term:", "Kind", "of:", "Definition:"]
    assert kept("### Instruction:\nSay hi\n\n  Input: x\n### Response:") == [
        "###", "Instruction:", "Input:", "###", "Response:"]
    # Not labels: a colon inside a line, more than 3 words before it, a colon not ending a word.
    assert kept("It is a gum: a resin\nSee http://x.org at 12:30") == []
    assert kept("Which category does this term belong to: act, food?") == []
    assert kept("Answer:") == ["Answer:"]                                    # one line may be a label


def test_labels_are_kept_when_compressing_and_not_by_default():
    row = {"prompt": "Term: gum arabic\nKind of: resin\nDefinition:", "response": "a gum"}
    with_labels, _ = compress_records(WordScorer(), [row], prompt_rate=0.75, response_rate=1.0,
                                      force_keep=["cue", "labels"])
    assert with_labels[0]["prompt"] == "Term: gum\nKind of:\nDefinition:"
    default, _ = compress_records(WordScorer(), [row], prompt_rate=0.75, response_rate=1.0)
    assert default[0]["prompt"] == "Term: gum arabic\nKind\nDefinition:"


class WordScorer:
    """A stand-in scorer LM: whitespace words are tokens, and each text's earlier words score
    higher (so a last line is what self-information would drop first)."""

    def token_nll(self, texts, contexts=None, *, batch_size=16):
        out = []
        for text in texts:
            n = len(re.findall(r"\s*\S+", text))
            out.append(word_tokens(text, [float(n - i) for i in range(n)]))
        return out

    def count_tokens(self, texts):
        return count_words(texts)


def test_the_prompt_cue_is_kept_and_a_response_has_none():
    row = {"id": "r", "prompt": "Describe the red ball\nAnswer:", "response": "a big red ball\nthe end",
           "choices": None, "label": None, "meta": {}}
    out, info = compress_records(WordScorer(), [row], prompt_rate=0.6, response_rate=0.5)
    assert out[0]["prompt"] == "Describe the\nAnswer:"                 # the cue displaces "red"
    assert out[0]["response"] == "a big red"                              # a response's last line is not a cue
    assert info[0]["prompt"]["tokens_out"] == info[0]["prompt"]["target"] == 3
    bare, _ = compress_records(WordScorer(), [row], prompt_rate=0.6, response_rate=0.5, force_keep=[])
    assert bare[0]["prompt"] == "Describe the red"


def test_compress_text_keeps_the_best_words_in_order():
    text = "alpha beta gamma delta epsilon zeta"
    scores = word_tokens(text, [1, 6, 2, 5, 4, 3])
    out = compress_text(text, scores, 0.5, count_words, force_keep=[])
    assert out.text == "beta delta epsilon" and (out.tokens_in, out.tokens_out, out.target) == (6, 3, 3)
    forced = compress_text("we saw 3 cats not dogs", word_tokens("we saw 3 cats not dogs", [9, 9, 0, 9, 0, 0]),
                           0.3, count_words)
    assert forced.text == "3 not" and not forced.over_budget
    over = compress_text("1 2 3 4 cats", word_tokens("1 2 3 4 cats", [0, 0, 0, 0, 9]), 0.3, count_words)
    assert over.text == "1 2 3 4" and over.over_budget


# ------------------------------------------------------------------------------ with a scorer
@pytest.fixture(scope="module")
def scorer(micro_zoo):
    from damoc.data.lm import ScorerLM

    return ScorerLM.load(str(micro_zoo / "micro-qwen2-tiny-domain"), device="cpu")


def task_rows(task: str, n: int) -> list[dict]:
    with gzip.open(DATA_DIR / task / "train.jsonl.gz", "rt") as f:
        return [json.loads(line) for line in itertools.islice(f, n)]


@pytest.fixture(scope="module")
def short_rows(scorer):
    """Short generation rows (5-30 scorer tokens per field): the term and its hypernym as the
    prompt, the WordNet gloss as the response."""
    rows = []
    for row in task_rows("wordnet-defgen", 200):
        prompt = "\n".join(row["prompt"].splitlines()[:2])
        rows.append({**row, "prompt": prompt})
    counts = scorer.count_tokens([r["prompt"] for r in rows] + [r["response"] for r in rows])
    short = [r for r, p, a in zip(rows, counts[:len(rows)], counts[len(rows):]) if 5 <= p <= 30 and 5 <= a <= 30]
    assert len(short) >= 60
    return short[:60]


def is_subsequence(words: list[str], original: list[str]) -> bool:
    """Each output word is an input word, in order; at most one may be cut short (a token prefix
    fills a gap the whole words leave)."""
    it, cut = iter(original), 0
    for word in words:
        for candidate in it:
            if candidate == word:
                break
            if candidate.startswith(word) and cut == 0:
                cut += 1
                break
        else:
            return False
    return True


@pytest.mark.parametrize("rate", RATES)
def test_rate_is_met_within_one_token_on_short_rows(scorer, short_rows, rate):
    out, info = compress_records(scorer, short_rows, prompt_rate=rate, response_rate=rate, force_keep=[])
    for row, new, row_info in zip(short_rows, out, info):
        assert not row_info["over_budget"]
        for field in ("prompt", "response"):
            n = scorer.count_tokens([row[field]])[0]
            target = max(1, math.floor(rate * n + 0.5 + 1e-9))
            got = scorer.count_tokens([new[field]])[0]            # measured on the written text
            assert row_info[field] == {"tokens_in": n, "tokens_out": got, "target": target}
            assert abs(got - target) <= 1, (field, row[field], new[field], row_info)
            assert new[field] and new[field] == new[field].lstrip()
            assert is_subsequence(new[field].split(), row[field].split()), (row[field], new[field])


def test_force_kept_words_survive_and_overruns_are_flagged(scorer):
    rows = [{"id": "a", "prompt": "Dosage: take 250 mg twice daily, but never with alcohol or grapefruit juice.",
             "response": "The patient should not exceed 500 mg because the liver cannot clear it quickly.",
             "choices": None, "label": None, "meta": {"source": 7}},
            {"id": "b", "prompt": "Why is the sky blue during the day but red at sunset?",
             "response": "Sunlight scatters off air molecules; blue light scatters most, so the sky looks blue.",
             "choices": None, "label": None, "meta": {}}]
    out, info = compress_records(scorer, rows, prompt_rate=0.4, response_rate=0.4,
                                 force_keep=["digits", "negations", "Grapefruit", "sunset", "scatters"])
    for word in ("250", "never", "grapefruit"):
        assert word in out[0]["prompt"].split()
    for word in ("not", "500", "cannot"):
        assert word in out[0]["response"].split()
    assert "sunset?" in out[1]["prompt"] and out[1]["response"].count("scatters") == 2
    for row_info in info:
        for field in ("prompt", "response"):
            got, target = row_info[field]["tokens_out"], row_info[field]["target"]
            assert abs(got - target) <= 1 or (got > target and row_info["over_budget"])
    # force-kept words alone over the target: kept anyway, and flagged
    crowded = [{"id": "c", "prompt": "not 12 no 34 never 56 cannot 78 plus some other words here",
                "response": "ok then", "choices": None, "label": None, "meta": {}}]
    out, info = compress_records(scorer, crowded, prompt_rate=0.3, response_rate=1.0)
    assert out[0]["prompt"].startswith("not 12 no 34 never 56 cannot 78") and info[0]["over_budget"]


def test_classification_responses_and_choice_text_are_never_dropped(scorer):
    rows = task_rows("wordnet-lexcat", 8)
    original = copy.deepcopy(rows)
    out, info = compress_records(scorer, rows, prompt_rate=0.5, response_rate=0.3)
    assert rows == original                                            # inputs untouched
    for row, new, row_info in zip(rows, out, info):
        assert new["response"] == row["response"] == row["choices"][row["label"]]
        assert row_info["response"]["tokens_out"] == row_info["response"]["tokens_in"]
        assert set(new["meta"]["compressed_from"]) == {"prompt"}
        assert new["meta"]["compressed_from"]["prompt"] == row["prompt"]
        assert new["prompt"] != row["prompt"]
        assert new["prompt"].endswith("\nAnswer:") and row["prompt"].endswith("\nAnswer:")   # the cue
        question = row["prompt"].split("Question:")[1]
        for choice in row["choices"]:                                   # every occurrence kept
            expected = len(re.findall(rf"(?<!\w){choice}(?!\w)", row["prompt"], re.IGNORECASE))
            assert len(re.findall(rf"(?<!\w){choice}(?!\w)", new["prompt"], re.IGNORECASE)) == expected
            assert re.search(rf"(?<!\w){choice}(?!\w)", question)


def test_contrastive_scores_select_differently_from_conditional(scorer, short_rows):
    rows = short_rows[:20]
    conditional, _ = compress_records(scorer, rows, prompt_rate=0.5, response_rate=0.5)
    contrastive, info = compress_records(scorer, rows, prompt_rate=0.5, response_rate=0.5, response_score="contrastive")
    assert [r["prompt"] for r in conditional] == [r["prompt"] for r in contrastive]   # prompts: self-information
    assert any(a["response"] != b["response"] for a, b in zip(conditional, contrastive))
    assert all(abs(i["response"]["tokens_out"] - i["response"]["target"]) <= 1 or i["over_budget"] for i in info)


def test_rate_one_is_identity_and_bad_input_is_refused(scorer, short_rows):
    rows = short_rows[:5]
    out, info = compress_records(scorer, rows, prompt_rate=1.0, response_rate=1.0)
    assert out == rows and all(a is not b for a, b in zip(out, rows))
    assert all(i[f]["tokens_in"] == i[f]["tokens_out"] == i[f]["target"] for i in info for f in ("prompt", "response"))
    out, _ = compress_records(scorer, rows, prompt_rate=1.0, response_rate=0.5)
    assert any(o["response"] != r["response"] for r, o in zip(rows, out))
    assert all(r["prompt"] == o["prompt"] and set(o["meta"]["compressed_from"]) == {"response"}
               for r, o in zip(rows, out) if o["response"] != r["response"])
    empty = [*rows[:2], {**rows[2], "id": "blank-row", "response": "  \n"}]
    with pytest.raises(ValueError, match="blank-row"):
        compress_records(scorer, empty, prompt_rate=0.5, response_rate=0.5)
    with pytest.raises(ValueError, match="response_score"):
        compress_records(scorer, rows, prompt_rate=0.5, response_rate=0.5, response_score="mean")
    with pytest.raises(ValueError, match="prompt_rate"):
        compress_records(scorer, rows, prompt_rate=0.0, response_rate=0.5)


def test_measure_tokens_in_another_tokenizer(scorer, short_rows):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    corpus = [r["prompt"] for r in task_rows("wordnet-defgen", 300)] + [r["response"] for r in short_rows]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus, vocab_size=400, min_frequency=2, show_progress=False)
    other = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer)
    out, info = compress_records(scorer, short_rows[:30], prompt_rate=0.5, response_rate=0.5)
    measured = measure_tokens(other, short_rows[:30], out)
    for field in ("prompt", "response"):
        before = sum(len(other(r[field], add_special_tokens=False)["input_ids"]) for r in short_rows[:30])
        after = sum(len(other(r[field], add_special_tokens=False)["input_ids"]) for r in out)
        assert (measured[field]["tokens_in"], measured[field]["tokens_out"]) == (before, after)
        assert measured[field]["keep_ratio"] == pytest.approx(after / before)
        assert 0.3 < measured[field]["keep_ratio"] < 0.75 and measured[field]["rows"] == 30
        # a different tokenizer: different counts than the scorer's, same kind of ratio
        assert before != sum(i[field]["tokens_in"] for i in info)
    assert measured["total"]["tokens_in"] == measured["prompt"]["tokens_in"] + measured["response"]["tokens_in"]
    assert measure_tokens(bpe._tokenizer, short_rows[:30], out)["prompt"] == measured["prompt"]   # raw tokenizers too
    with pytest.raises(ValueError):
        measure_tokens(other, short_rows[:30], out[:29])

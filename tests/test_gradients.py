"""Scorers that briefly fine-tune the scorer LM (LESS, MoDS necessity, Cherry IFD) on a real micro
zoo model and the bundled WordNet tasks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from damoc.config.schema import DataConfig
from damoc.data import gradients as G
from damoc.data import load_data
from damoc.data.lm import ScorerLM

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The micro models are far too small to gain from intra-op threads, and on a shared 2-core
    machine two OpenMP threads per process are slower by an order of magnitude."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def lm(micro_zoo):
    path = micro_zoo / "micro-qwen2-tiny-domain"
    return ScorerLM(AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path), name="micro")


@pytest.fixture(scope="module")
def lexcat():
    return load_data(DataConfig.model_validate({"source": "bundled:wordnet-lexcat",
                                                "max_rows": {"train": 200, "test": 8}})).splits["train"]


@pytest.fixture(scope="module")
def defgen():
    return load_data(DataConfig.model_validate({"source": "bundled:wordnet-defgen",
                                                "max_rows": {"train": 32, "test": 8}})).splits["train"]


def answer_loss(lm, rows):
    return lm.answer_losses([r["prompt"] for r in rows], [r["response"] for r in rows])[0]


def test_brief_finetune_trains_a_copy(lm, defgen):
    rows = defgen[:8]
    weights = {k: v.clone() for k, v in lm.model.state_dict().items()}
    rng = torch.get_rng_state()
    tuned = G.brief_finetune(lm, rows, steps=40, learning_rate=1e-2, seed=0)
    assert torch.equal(torch.get_rng_state(), rng)                      # the caller's RNG is restored
    after = lm.model.state_dict()
    assert after.keys() == weights.keys() and all(torch.equal(weights[k], after[k]) for k in weights)
    assert not any("lora" in name for name, _ in lm.model.named_modules())
    assert isinstance(tuned, ScorerLM) and tuned.model is not lm.model and not tuned.model.training
    assert tuned.max_length == lm.max_length
    assert answer_loss(tuned, rows).mean() < answer_loss(lm, rows).mean() - 0.1


def test_less_prefers_rows_like_the_validation_set(lm, lexcat):
    animal = [r for r in lexcat if r["response"] == "animal"]
    other = [r for r in lexcat if r["response"] != "animal"]
    validation = animal[:8]
    train = validation + animal[8:16] + other[:16]      # duplicates, same category, other categories
    kwargs = {"warmup_ratio": 0.25, "learning_rate": 1e-2, "proj_dim": 128, "seed": 0}
    scores = G.less_scores(lm, train, validation, **kwargs)
    assert scores.shape == (len(train),) and np.isfinite(scores).all() and np.abs(scores).max() <= 1 + 1e-6
    assert np.array_equal(scores, G.less_scores(lm, train, validation, **kwargs))   # deterministic for a seed
    assert not np.array_equal(scores, G.less_scores(lm, train, validation, **{**kwargs, "seed": 1}))
    duplicates, same, others = scores[:8].mean(), scores[8:16].mean(), scores[16:].mean()
    assert duplicates > others + 0.05 and same > others + 0.05


def test_chunked_projection_equals_the_dense_one():
    P, d, rows = 1000, 16, 128
    x = torch.randn(3, P, generator=torch.Generator().manual_seed(0))
    dense = torch.cat([G.projection_chunk(c, min(rows, P - lo), d, seed=7) for c, lo in enumerate(range(0, P, rows))])
    assert dense.shape == (P, d) and set(dense.unique().tolist()) == {-d ** -0.5, d ** -0.5}
    projected = G.random_projection(x, d, seed=7, chunk_rows=rows)
    torch.testing.assert_close(projected, x @ dense, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(projected, G.random_projection(x, d, seed=7, chunk_rows=rows), rtol=0, atol=0)
    assert not torch.allclose(projected, G.random_projection(x, d, seed=8, chunk_rows=rows))
    wide = G.random_projection(x, 512, seed=0)                         # Johnson-Lindenstrauss: norms kept
    ratio = wide.norm(dim=1) / x.norm(dim=1)
    assert ((ratio > 0.8) & (ratio < 1.2)).all()


def test_projection_generates_one_chunk_at_a_time(monkeypatch):
    sizes = []
    real = G.projection_chunk

    def spy(index, rows, proj_dim, *, seed):
        sizes.append((index, rows * proj_dim))
        return real(index, rows, proj_dim, seed=seed)

    monkeypatch.setattr(G, "projection_chunk", spy)
    P, d = 200_000, 32
    G.random_projection(torch.randn(2, P), d, seed=0, chunk_rows=4096)
    assert [i for i, _ in sizes] == list(range(-(-P // 4096)))           # every chunk once, in order
    assert max(n for _, n in sizes) == 4096 * d


def test_projection_memory_stays_bounded_on_a_large_gradient():
    """P = 2M, proj_dim = 64: the dense matrix would be 512 MiB; chunked, the peak RSS grows by a few MiB."""
    code = """
import resource, torch
torch.set_num_threads(1)
from damoc.data.gradients import random_projection
x = torch.randn(1, 2_000_000)
random_projection(x[:, :10_000], 64, seed=0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
y = random_projection(x, 64, seed=0)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
assert y.shape == (1, 64)
print((after - before) * 1024)
"""
    done = subprocess.run([sys.executable, "-c", code], check=False, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    grown = int(done.stdout.strip().splitlines()[-1])
    dense = 2_000_000 * 64 * 4
    assert grown < 64 * 2 ** 20 < dense


def test_necessity_is_low_on_the_seed_rows(lm, defgen):
    seed_rows, unrelated = defgen[:8], defgen[8:32]
    losses = G.necessity_losses(lm, seed_rows, seed_rows + unrelated, steps=40, learning_rate=1e-2, seed=0)
    assert losses.shape == (32,) and np.isfinite(losses).all()
    base_gap = answer_loss(lm, unrelated).mean() - answer_loss(lm, seed_rows).mean()
    gap = losses[8:].mean() - losses[:8].mean()
    assert gap > 0 and gap > base_gap + 0.1        # lower on the seed rows, because of the seed fine-tune


def test_cherry_ifd_under_the_pre_experienced_model(lm, lexcat):
    rows = lexcat[:24]
    ifd = G.cherry_ifd(lm, rows, [0, 3, 5, 9], steps=10, learning_rate=1e-2, seed=0)
    assert ifd.shape == (24,) and np.isfinite(ifd).all() and (ifd > 0).all()
    assert np.array_equal(ifd, G.cherry_ifd(lm, rows, np.array([0, 3, 5, 9]), steps=10, learning_rate=1e-2, seed=0))


def test_the_stage_path_equals_the_in_process_functions(lm, micro_zoo, lexcat, defgen, tmp_path):
    """What the stage runs (fine-tune once here, save the checkpoint, score the rows with a scorer
    class on an engine, in batches unlike the reference's) gives the numbers of cherry_ifd,
    necessity_losses and less_scores."""
    from damoc.data.engine import LocalEngine
    from damoc.data.scorers import IFDScorer, LessGradientScorer

    engine = LocalEngine(batch_size=5)
    tune = {"steps": 10, "learning_rate": 1e-2, "seed": 0}

    rows, pre = lexcat[:24], [0, 3, 5, 9]
    G.save_merged(G.pre_experienced_model(lm, rows, pre, **tune), tmp_path / "cherry")
    assert not list((tmp_path / "cherry").glob("*.bin")) and list((tmp_path / "cherry").glob("*.safetensors"))
    ifd = engine.map(IFDScorer, {"model": str(tmp_path / "cherry")}, rows, desc="cherry")["ifd"]
    np.testing.assert_allclose(ifd, G.cherry_ifd(lm, rows, pre, **tune), rtol=1e-5)

    seed_rows, candidates = defgen[:8], defgen[8:20]
    G.save_merged(G.seed_model(lm, seed_rows, **tune), tmp_path / "mods")
    out = engine.map(IFDScorer, {"model": str(tmp_path / "mods"), "conditioned_only": True}, candidates, desc="mods")
    np.testing.assert_allclose(out["loss_conditioned"], G.necessity_losses(lm, seed_rows, candidates, **tune), rtol=1e-5)
    assert np.isnan(out["loss_alone"]).all()

    train, validation = lexcat[30:50], lexcat[50:58]
    warmup = {"warmup_ratio": 0.25, "learning_rate": 1e-2, "seed": 0}
    settings = {"proj_dim": 64, "seed": 0, "max_seq_length": G.MAX_SEQ_LENGTH, "gradient_block": 4,
                "chunk_rows": G.DEFAULT_CHUNK_ROWS}
    model, adam = G.less_warmup(lm, train, **warmup)
    G.save_less_checkpoint(tmp_path / "less", model, adam, base=str(micro_zoo / "micro-qwen2-tiny-domain"),
                           settings=settings)
    assert not list((tmp_path / "less").rglob("*.bin")) and len(list((tmp_path / "less").rglob("*.safetensors"))) == 2
    features = [engine.map(LessGradientScorer, {"model": str(tmp_path / "less"), "adam": adam_rows}, split,
                           desc="less")["feature"] for split, adam_rows in ((train, True), (validation, False))]
    assert features[0].shape == (20, 64) and features[1].shape == (8, 64)
    reference = G.less_scores(lm, train, validation, proj_dim=64, gradient_block=4, **warmup)
    np.testing.assert_allclose(G.less_influence(*features), reference, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("call, message", [
    (lambda lm, rows: G.less_scores(lm, rows, []), "validation_records is empty"),
    (lambda lm, rows: G.less_scores(lm, [], rows), "train_records is empty"),
    (lambda lm, rows: G.less_scores(lm, rows, rows, warmup_ratio=0), "warmup_ratio"),
    (lambda lm, rows: G.less_scores(lm, rows, rows, warmup_steps=0), "warmup_steps"),
    (lambda lm, rows: G.less_scores(lm, rows, rows, proj_dim=0), "proj_dim"),
    (lambda lm, rows: G.less_scores(lm, rows, rows, batch_size=0), "batch_size"),
    (lambda lm, rows: G.brief_finetune(lm, rows, steps=0, learning_rate=1e-3), "steps"),
    (lambda lm, rows: G.brief_finetune(lm, rows, steps=1, learning_rate=-1.0), "learning_rate"),
    (lambda lm, rows: G.brief_finetune(lm, rows, steps=1, learning_rate=1e-3, lora_r=0), "lora_r"),
    (lambda lm, rows: G.brief_finetune(lm, [{"prompt": "q"}], steps=1, learning_rate=1e-3), "records\\[0\\]"),
    (lambda lm, rows: G.necessity_losses(lm, [], rows, steps=1, learning_rate=1e-3), "seed_records is empty"),
    (lambda lm, rows: G.cherry_ifd(lm, rows, [], steps=1, learning_rate=1e-3), "pre_experience_indices is empty"),
    (lambda lm, rows: G.cherry_ifd(lm, rows, [0, 99], steps=1, learning_rate=1e-3), "out of range"),
    (lambda lm, rows: G.cherry_ifd(lm, rows, [1, 1], steps=1, learning_rate=1e-3), "repeated"),
    (lambda lm, rows: G.random_projection(torch.zeros(5), 4, seed=0), "2-d"),
])
def test_bad_arguments_raise_one_line_errors(lm, lexcat, call, message):
    with pytest.raises(ValueError, match=message) as error:
        call(lm, lexcat[:4])
    assert "\n" not in str(error.value)

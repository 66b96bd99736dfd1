"""The offline candidate zoo: micro zoo built for real (Ray tasks), checkpoints load with plain
transformers, manifest contents, caching, and the specs of every family."""

from __future__ import annotations

import json
import os

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from damoc.errors import DamocError
from damoc.zoo import build as zoo_build
from damoc.zoo.specs import DEMO, MICRO, ZOO_SIZES


def test_micro_zoo_manifest(micro_zoo):
    manifest = json.loads((micro_zoo / "zoo.json").read_text())
    assert manifest["size"] == "micro"
    candidates = manifest["candidates"]
    assert [c["name"] for c in candidates] == [s.name for s in MICRO]
    assert len({c["architecture"] for c in candidates}) >= 4
    assert max(c["layers"] for c in candidates) >= 8
    for c in candidates:
        assert (micro_zoo / c["path"] / "config.json").is_file()
        assert c["params"] > 0 and c["pretraining_tokens"] > 0
        assert 0 < c["final_pretraining_loss"] < 10
        assert sum(c["corpus_mix"].values()) == pytest.approx(1.0)
        lexcat = c["zero_shot"]["wordnet-lexcat"]
        assert lexcat["metric"] == "accuracy" and 0 <= lexcat["accuracy"] <= 1 and lexcat["rows"] == ZOO_SIZES["micro"]["zero_shot_rows"]
        defgen = c["zero_shot"]["wordnet-defgen"]
        assert defgen["metric"] == "rouge_l" and defgen["eval_loss"] > 0 and 0 <= defgen["rouge_l"] <= 1


@pytest.mark.parametrize("spec", MICRO, ids=lambda s: s.name)
def test_candidate_loads_with_plain_transformers(micro_zoo, spec):
    path = micro_zoo / spec.name
    files = set(os.listdir(path))
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= files
    assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert model.config.model_type == spec.model_type
    assert model.config.num_hidden_layers == spec.layers

    text = "Term: aspirin\nDefinition: the acetylated derivative of salicylic acid"
    ids = tokenizer(text, return_tensors="pt")
    assert tokenizer.decode(ids["input_ids"][0]) == text  # byte-level BPE round-trips exactly
    with torch.no_grad():
        out = model(**ids, labels=ids["input_ids"])
    assert torch.isfinite(out.loss) and out.logits.shape[-1] == len(tokenizer)

    # Generation with and without the KV cache gives the same greedy tokens.
    prompt = tokenizer("Term:", return_tensors="pt")
    cached = model.generate(**prompt, max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=tokenizer.pad_token_id)
    uncached = model.generate(**prompt, max_new_tokens=6, do_sample=False, use_cache=False, pad_token_id=tokenizer.pad_token_id)
    assert cached.shape[1] > prompt["input_ids"].shape[1]
    assert torch.equal(cached, uncached)


def test_rebuild_uses_the_cache_and_retrains_nothing(micro_zoo, micro_zoo_cache, tmp_path, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("a cached zoo was retrained")

    monkeypatch.setattr(zoo_build, "_run_on_ray", no_training)
    again = zoo_build.build_zoo("micro", tmp_path / "zoo", cache_root=micro_zoo_cache)
    assert json.loads((again / "zoo.json").read_text())["candidates"] == json.loads((micro_zoo / "zoo.json").read_text())["candidates"]
    a = micro_zoo / MICRO[0].name / "model.safetensors"
    b = again / MICRO[0].name / "model.safetensors"
    assert a.read_bytes() == b.read_bytes()


def test_a_second_build_on_the_same_machine_repeats_the_weights_bit_for_bit(micro_zoo, tmp_path):
    """Tokenizer, token streams and pretraining again from nothing (a fresh cache, in this
    process rather than a Ray task): the same bytes as the micro zoo's, and the manifest records
    their digest. (Other CPUs round differently: the digest tells whether two zoos are the same.)"""
    from damoc import fingerprint as fp
    from damoc.zoo.pretrain import pretrain

    spec = MICRO[0]
    settings = ZOO_SIZES["micro"]
    names = sorted({n for s in MICRO for n in s.corpus_mix})   # the tokenizer is trained on every corpus
    threads = torch.get_num_threads()
    try:
        tokenizer_key, tokenizer_dir = zoo_build._tokenizer(tmp_path / "cache", settings, names)
        streams = zoo_build._streams(tmp_path / "cache", tokenizer_key, tokenizer_dir, names)
        pretrain(spec, tokenizer_dir, {n: streams[n] for n in spec.corpus_mix}, tmp_path / "again", max_positions=settings["max_positions"], threads=1)
    finally:
        torch.set_num_threads(threads)
    built = micro_zoo / spec.name
    assert (tmp_path / "again" / "tokenizer.json").read_bytes() == (built / "tokenizer.json").read_bytes()
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == (built / "model.safetensors").read_bytes()
    manifest = json.loads((micro_zoo / "zoo.json").read_text())
    entry = next(c for c in manifest["candidates"] if c["name"] == spec.name)
    assert entry["weights_sha256"] == fp.file_digest(tmp_path / "again" / "model.safetensors")
    assert len({c["weights_sha256"] for c in manifest["candidates"]}) == len(MICRO)
    # Beside each digest, what else decides those bytes: this machine's processor and the kernels
    # torch dispatched to (the same settings trained on another CPU gave other weights).
    here = fp.arithmetic_platform()
    assert all(c["built_on"] == here for c in manifest["candidates"])
    assert here["cpu"] and here["cpu_capability"] == torch.backends.cpu.get_cpu_capability()


def test_portable_kernels_build_other_weights_that_narrower_instruction_sets_repeat(micro_zoo, micro_zoo_cache, tmp_path):
    """`--portable-kernels` pretrains in Ray workers started with torch's scalar kernels and MKL's
    compatible mode: the manifest says so per candidate, the weights are cached apart from (and
    differ from) the default build's, and a fresh process capped at older instruction sets (MKL at
    SSE4.2, oneDNN at SSE4.1), as an older CPU would be, pretrains the same bytes."""
    import subprocess
    import sys

    from damoc import fingerprint as fp

    portable = zoo_build.build_zoo("micro", tmp_path / "portable", cache_root=micro_zoo_cache, workers=2,
                                   portable_kernels=True)
    manifest = json.loads((portable / "zoo.json").read_text())
    native = json.loads((micro_zoo / "zoo.json").read_text())
    assert manifest["kernels"] == "portable" and native["kernels"] == "native"
    assert all(c["built_on"]["cpu_capability"] == "DEFAULT" and c["built_on"]["mkl_cbwr"] == "COMPATIBLE"
               for c in manifest["candidates"])
    native_digests = {c["name"]: c["weights_sha256"] for c in native["candidates"]}
    if torch.backends.cpu.get_cpu_capability() != "DEFAULT":   # x86 with AVX2 or wider: other rounding
        assert all(c["weights_sha256"] != native_digests[c["name"]] for c in manifest["candidates"])
    # The default build's entries are untouched: its zoo still resolves to its own bytes.
    assert all(fp.file_digest(micro_zoo / n / "model.safetensors") == d for n, d in native_digests.items())

    spec = MICRO[0]
    script = (
        "import sys, torch\n"
        "from pathlib import Path\n"
        "from damoc.zoo import build as zb\n"
        "from damoc.zoo.pretrain import pretrain\n"
        "from damoc.zoo.specs import MICRO, ZOO_SIZES\n"
        "settings = ZOO_SIZES['micro']; spec = MICRO[0]\n"
        "names = sorted({n for s in MICRO for n in s.corpus_mix})\n"
        "key, tokenizer = zb._tokenizer(Path(sys.argv[1]), settings, names)\n"
        "streams = zb._streams(Path(sys.argv[1]), key, tokenizer, names)\n"
        "pretrain(spec, tokenizer, {n: streams[n] for n in spec.corpus_mix}, Path(sys.argv[2]),\n"
        "         max_positions=settings['max_positions'], threads=1)\n")
    env = {**os.environ, **zoo_build.PORTABLE_KERNEL_ENV, "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
           "ONEDNN_MAX_CPU_ISA": "SSE41"}
    proc = subprocess.run([sys.executable, "-c", script, str(micro_zoo_cache), str(tmp_path / "older")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "older" / "model.safetensors").read_bytes() == (portable / spec.name / "model.safetensors").read_bytes()


def test_refuses_to_overwrite_a_directory_that_is_not_a_zoo(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(DamocError, match="refusing to write the zoo to .*mine"):
        zoo_build.build_zoo("micro", tmp_path / "mine", cache_root=tmp_path / "cache")
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"


def test_unknown_size(tmp_path):
    with pytest.raises(DamocError, match="unknown zoo size 'huge'"):
        zoo_build.build_zoo("huge", tmp_path / "z", cache_root=tmp_path)


def test_demo_zoo_design():
    """>= 6 candidates over >= 4 architecture classes, differing in width, depth and corpus mix,
    some deep enough for layer pruning."""
    assert len(DEMO) >= 6
    assert len({s.model_type for s in DEMO}) >= 4
    assert len({s.hidden_size for s in DEMO}) >= 3 and len({s.layers for s in DEMO}) >= 3
    assert sum(s.layers >= 8 for s in DEMO) >= 2
    assert len({tuple(sorted(s.corpus_mix.items())) for s in DEMO}) == len(DEMO)
    assert len({s.model_type for s in MICRO}) >= 4 and {s.model_type for s in MICRO} <= {s.model_type for s in DEMO}


@pytest.mark.parametrize("spec", DEMO, ids=lambda s: s.name)
def test_every_demo_spec_builds_a_stock_model(spec):
    config = spec.hf_config(vocab_size=4096, bos_id=0, eos_id=0, pad_id=1)
    model = AutoModelForCausalLM.from_config(config)
    assert model.config.num_hidden_layers == spec.layers
    assert model.config.hidden_size == spec.hidden_size
    x = torch.randint(0, 4096, (2, 16))
    assert model(input_ids=x).logits.shape == (2, 16, 4096)

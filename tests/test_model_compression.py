"""Model compression (damoc.models): Block Influence, layer choice, pruning across architectures,
sparse merging, the `damoc model prune` command, and bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from damoc.config.schema import ModelCompressionConfig
from damoc.models.compress import calibration_rows, compress_model
from damoc.models.importance import (LayerImportance, ModelCompressionError, decoder_layer_list,
                                     layer_importance)
from damoc.models.merge import merge_deltas, merge_layers
from damoc.models.prune import choose_layers, receiving_layers, remove_layers

# Tiny random models of the common hub families (and their layer-list layouts); gemma2 and qwen3
# carry per-layer `layer_types` with sliding-window layers, which pruning must keep aligned.
FAMILIES = {
    "llama": {},
    "qwen2": {},
    "qwen3": {"head_dim": 8, "use_sliding_window": True, "sliding_window": 4, "max_window_layers": 2},
    "mistral": {"sliding_window": None},
    "gemma": {"head_dim": 8},
    "gemma2": {"head_dim": 8, "sliding_window": 4},
    "phi3": {"pad_token_id": 0},
    "gpt2": {"n_embd": 32, "n_layer": 6, "n_head": 4, "n_positions": 64},
    "gpt_neox": {},
    "opt": {"ffn_dim": 64, "word_embed_proj_dim": 32, "pad_token_id": 0},
}


def tiny_model(model_type: str, layers: int = 6, seed: int = 0):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    kwargs = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    if model_type == "gpt2":
        kwargs = dict(vocab_size=96)
    config = AutoConfig.for_model(model_type, **kwargs, **FAMILIES[model_type])
    if model_type == "gpt2":
        config.n_layer = layers
    return AutoModelForCausalLM.from_config(config).eval()


def batch(rows: list[list[int]], pad: int = 0) -> dict[str, torch.Tensor]:
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def naive_states(model, ids: list[int]) -> list[torch.Tensor]:
    """x_0..x_L for one unpadded sequence: layer inputs from output_hidden_states, and the last
    layer's raw output from a hook (output_hidden_states normalises its last entry)."""
    _, _, layers = decoder_layer_list(model)
    captured = {}
    handle = layers[-1].register_forward_hook(lambda m, a, o: captured.__setitem__("x", o[0] if isinstance(o, tuple) else o))
    with torch.no_grad():
        hidden = model(torch.tensor([ids]), output_hidden_states=True).hidden_states
    handle.remove()
    return [h[0] for h in hidden[:-1]] + [captured["x"][0]]


SEQUENCES = [[5, 9, 14, 3, 22, 7, 31], [8, 2, 40], [11, 12, 13, 14, 15]]


@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
def test_block_influence_matches_a_per_token_loop_and_ignores_padding(model_type):
    model = tiny_model(model_type)
    states = [naive_states(model, s) for s in SEQUENCES]
    n_layers = len(states[0]) - 1
    tokens = sum(len(s) for s in SEQUENCES)
    expected_bi, expected_ad = [], []
    for layer in range(n_layers):
        total = sum(1 - float(torch.dot(x[layer][t], x[layer + 1][t]) / (x[layer][t].norm() * x[layer + 1][t].norm()))
                    for x in states for t in range(len(x[0])))
        expected_bi.append(total / tokens)
    for start in range(n_layers - 1):
        total = 0.0
        for x in states:
            for t in range(len(x[0])):
                a, b = x[start][t], x[start + 2][t]
                total += math.acos(max(-1.0, min(1.0, float(torch.dot(a, b) / (a.norm() * b.norm()))))) / math.pi
        expected_ad.append(total / tokens)

    # One padded batch (padding tokens would change the means if they were counted).
    got = layer_importance(model, [batch(SEQUENCES, pad=1)], block_size=2)
    assert got.tokens == tokens and got.samples == 3
    assert got.block_influence == pytest.approx(expected_bi, rel=1e-4, abs=1e-6)
    assert got.angular_distance[:n_layers - 1] == pytest.approx(expected_ad, rel=1e-4, abs=1e-6)
    assert got.angular_distance[n_layers - 1] is None  # the block would run past the last layer
    # Split into batches of different padding: the same figures.
    again = layer_importance(model, [batch(SEQUENCES[:1]), batch(SEQUENCES[1:], pad=7)], block_size=2)
    assert again.block_influence == pytest.approx(got.block_influence, rel=1e-5)


def test_importance_memory_is_linear_in_sequence_length_and_bounded_in_depth(monkeypatch):
    """Cosines are row-wise ([batch, tokens], never tokens x tokens), and at most block + 1 layer
    inputs are held, whatever the depth."""
    import damoc.models.importance as importance

    shapes = []
    real = torch.nn.functional.cosine_similarity

    def spy(a, b, dim):
        out = real(a, b, dim=dim)
        shapes.append(tuple(out.shape))
        return out

    monkeypatch.setattr(importance.torch.nn.functional, "cosine_similarity", spy)
    for depth in (6, 12):
        model = tiny_model("llama", layers=depth)
        for length in (16, 32):
            shapes.clear()
            got = layer_importance(model, [batch([list(range(2, 2 + length))] * 2)], block_size=3)
            assert set(shapes) == {(2, length)}
            assert got.peak_states == 4


def test_lowest_bi_and_block_choose_the_right_layers():
    bi = [0.9, 0.05, 0.3, 0.02, 0.04, 0.2, 0.01]
    importance = LayerImportance(bi, tokens=10, samples=1)
    # Layer 6 has the lowest BI but is protected as the last layer.
    assert choose_layers(importance, 2, mode="lowest_bi") == [3, 4]
    assert choose_layers(importance, 2, mode="lowest_bi", protect_last=False) == [3, 6]
    assert choose_layers(importance, 5, mode="lowest_bi") == [1, 2, 3, 4, 5]
    with pytest.raises(ModelCompressionError, match="cannot remove 6 of 7 layers with 2 protected"):
        choose_layers(importance, 6, mode="lowest_bi")
    blocks = LayerImportance(bi, 10, 1, block_size=2, angular_distance=[0.01, 0.3, 0.2, 0.05, 0.4, 0.02, None])
    # Block at 0 is the closest but holds the protected first layer; at 5 it holds the last.
    assert choose_layers(blocks, 2, mode="block") == [3, 4]
    assert choose_layers(blocks, 2, mode="block", protect_first=False) == [0, 1]
    with pytest.raises(ModelCompressionError, match="blocks of 3 layers"):
        choose_layers(blocks, 3, mode="block")


def test_receivers_are_the_nearest_kept_layers():
    assert receiving_layers(8, [2, 3, 6]) == {2: 1, 3: 1, 6: 5}
    assert receiving_layers(8, [0, 1, 5], "preceding") == {0: 2, 1: 2, 5: 4}  # nothing precedes 0 and 1
    assert receiving_layers(8, [2, 3, 6], "following") == {2: 4, 3: 4, 6: 7}


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_pruned_checkpoint_of_each_family_reloads_and_generates_like_no_cache(model_type, tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_model(model_type, layers=6)
    kept_modules = [id(m) for i, m in enumerate(decoder_layer_list(model)[2]) if i not in (2, 4)]
    layer_types = getattr(model.config, "layer_types", None)
    mapping = remove_layers(model, [2, 4])
    assert mapping == [0, 1, None, 2, None, 3]
    layers = decoder_layer_list(model)[2]
    assert [id(m) for m in layers] == kept_modules
    attention_indices = [m.layer_idx for layer in layers for m in layer.modules() if hasattr(m, "layer_idx")]
    assert attention_indices and sorted(set(attention_indices)) == [0, 1, 2, 3]
    assert model.config.num_hidden_layers == 4
    if layer_types:
        assert model.config.layer_types == [t for i, t in enumerate(layer_types) if i not in (2, 4)]
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert len(decoder_layer_list(reloaded)[2]) == 4
    if reloaded.config.tie_word_embeddings:
        assert reloaded.get_output_embeddings().weight.data_ptr() == reloaded.get_input_embeddings().weight.data_ptr()
    prompt = torch.tensor([[5, 17, 33, 2, 60, 8, 9, 40]])
    with torch.no_grad():
        assert torch.allclose(reloaded(prompt).logits, model(prompt).logits, atol=1e-5)
        cached = reloaded.generate(prompt, max_new_tokens=12, do_sample=False, use_cache=True, pad_token_id=0)
        uncached = reloaded.generate(prompt, max_new_tokens=12, do_sample=False, use_cache=False, pad_token_id=0)
    assert cached.shape[1] == prompt.shape[1] + 12 and torch.equal(cached, uncached)


def test_every_micro_zoo_architecture_prunes_reloads_and_generates(micro_zoo, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from damoc.data import load_data
    from damoc.config import DataConfig
    from damoc.models.compress import save_compressed

    rows = load_data(DataConfig(source="bundled:wordnet-lexcat", max_rows={"train": 16})).splits["train"]
    manifest = json.loads((micro_zoo / "zoo.json").read_text())
    architectures = set()
    for candidate in manifest["candidates"]:
        path = micro_zoo / candidate["path"]
        model = AutoModelForCausalLM.from_pretrained(path).eval()
        tokenizer = AutoTokenizer.from_pretrained(path)
        tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
        layers = candidate["layers"]
        # Two-layer candidates can only lose a layer when one end is unprotected.
        cfg = ModelCompressionConfig.model_validate({"prune_ratio": 0.5, "protect_first": layers > 2,
                                                     "merge": {"method": "ties"}})
        model, info = compress_model(model, cfg, rows, tokenizer=tokenizer, max_length=48, name=candidate["name"])
        assert len(info["removed"]) == round(0.5 * layers) and info["layers_kept"] == layers - len(info["removed"])
        assert len(info["importance"]) == layers and info["params_kept"] < info["params"]
        assert [e["layer"] for e in info["importance"]] == list(range(layers))
        assert all(e["merged_into"] is not None and not e["merged_into"] in info["removed"]
                   for e in info["importance"] if e["removed"])
        out = save_compressed(model, tokenizer, info, tmp_path / candidate["name"])
        reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
        assert reloaded.config.num_hidden_layers == info["layers_kept"]
        ids = tokenizer("Word: dog. Definition:", return_tensors="pt").input_ids
        with torch.no_grad():
            a = reloaded.generate(ids, max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=tokenizer.pad_token_id)
            b = reloaded.generate(ids, max_new_tokens=6, do_sample=False, use_cache=False, pad_token_id=tokenizer.pad_token_id)
        assert torch.equal(a, b)
        assert json.loads((out / "importance.json").read_text()) == info["importance"]
        assert (out / "importance.png").stat().st_size > 0
        architectures.add(candidate["architecture"])
    assert len(architectures) == 6


# ----------------------------------------------------------------------------------- merging
D1 = torch.tensor([1.0, -2.0, 3.0])
D2 = torch.tensor([2.0, 1.5, -1.0])


def test_merge_methods_match_hand_computed_cases():
    assert torch.equal(merge_deltas([D1, D2], "linear"), torch.tensor([3.0, -0.5, 2.0]))
    # TIES at density 2/3: trims to [0,-2,3] and [2,1.5,0]; elected signs (sum) [+,-,+]; disjoint
    # mean over agreeing non-zero entries.
    assert torch.equal(merge_deltas([D1, D2], "ties", density=2 / 3), torch.tensor([2.0, -2.0, 3.0]))
    # TIES at density 1 is election only: signs of [3,-0.5,2] -> [+,-,+]; entry 1 keeps only -2.
    assert torch.equal(merge_deltas([D1, D2], "ties", density=1.0), torch.tensor([1.5, -2.0, 3.0]))
    assert torch.equal(merge_deltas([D1, D2], "dare_ties", density=1.0), torch.tensor([1.5, -2.0, 3.0]))
    # One delta: TIES keeps its top-density magnitudes unchanged.
    assert torch.equal(merge_deltas([D1], "ties", density=1 / 3), torch.tensor([0.0, 0.0, 3.0]))


def test_dare_is_seeded_rescaled_and_identity_at_density_one():
    delta = torch.linspace(-1, 1, 4000)
    assert torch.equal(merge_deltas([delta], "dare", density=1.0), delta)
    a = merge_deltas([delta], "dare", density=0.25, seed=3)
    assert torch.equal(a, merge_deltas([delta], "dare", density=0.25, seed=3))
    assert not torch.equal(a, merge_deltas([delta], "dare", density=0.25, seed=4))
    kept = a != 0
    assert 0.2 < kept.float().mean() < 0.3
    assert torch.allclose(a[kept], delta[kept] * 4)  # survivors rescaled by 1/density
    ones = merge_deltas([torch.ones(20000)], "dare", density=0.5, seed=0)
    assert abs(float(ones.mean()) - 1.0) < 0.05  # expectation preserved
    state = torch.random.get_rng_state()
    merge_deltas([delta], "dare", density=0.5, seed=1)
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's generator is untouched


def test_merge_layers_folds_removed_layers_into_receivers():
    model = tiny_model("llama", layers=5)
    layers = decoder_layer_list(model)[2]
    before = {i: {n: p.detach().clone() for n, p in layers[i].named_parameters()} for i in range(5)}
    report = merge_layers(model, {2: 1, 3: 1}, method="linear", scale=0.5)
    assert report == [{"receiver": 1, "merged": [2, 3], "tensors": len(before[1])}]
    for name, param in layers[1].named_parameters():
        expected = before[1][name] + 0.5 * ((before[2][name] - before[1][name]) + (before[3][name] - before[1][name]))
        assert torch.allclose(param, expected, atol=1e-6)
    for i in (0, 2, 3, 4):  # only the receiver changes
        assert all(torch.equal(p, before[i][n]) for n, p in layers[i].named_parameters())


def test_merge_refuses_mismatched_shapes():
    model = tiny_model("llama", layers=4)
    layers = decoder_layer_list(model)[2]
    layers[2].mlp.up_proj = nn.Linear(32, 48, bias=False)
    with pytest.raises(ModelCompressionError, match=r"tiny: cannot merge layer 2 into layer 1: tensor 'mlp.up_proj.weight' has shape \(48, 32\) vs \(64, 32\)"):
        merge_layers(model, {2: 1}, method="ties", name="tiny")


# ------------------------------------------------------------------------------ compress_model
def fake_rows(n: int) -> list[dict]:
    return [{"id": str(i), "prompt": f"Word: w{i}. Definition: thing number {i}.", "response": "animal",
             "choices": ["animal", "plant"], "label": 0, "meta": {}} for i in range(n)]


class CharTokenizer:
    """A stand-in tokenizer (bytes mod 90 + 2) so compress_model runs on tiny random models."""
    pad_token_id, eos_token_id, bos_token_id, chat_template = 0, 1, None, None

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [2 + b % 90 for b in text.encode()]}


def test_compress_model_is_deterministic_and_reports_each_layer():
    cfg = ModelCompressionConfig.model_validate({"prune_ratio": 0.34, "merge": {"method": "dare_ties", "seed": 5}})
    results = []
    for _ in range(2):
        model = tiny_model("qwen2", layers=6)
        model, info = compress_model(model, cfg, fake_rows(6), tokenizer=CharTokenizer(), max_length=32, name="q")
        results.append(({k: v.clone() for k, v in model.state_dict().items()}, info))
    (state_a, info_a), (state_b, info_b) = results
    assert info_a["removed"] == info_b["removed"] and len(info_a["removed"]) == 2
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert info_a["layers_kept"] == 4 and info_a["method"] == "lowest_bi+dare_ties"
    bi = [e["block_influence"] for e in info_a["importance"]]
    eligible = sorted(range(1, 5), key=lambda i: bi[i])
    assert info_a["removed"] == sorted(eligible[:2])


def test_nothing_to_remove_returns_the_model_untouched():
    model = tiny_model("llama", layers=2)
    cfg = ModelCompressionConfig.model_validate({"prune_ratio": 0.2})  # round(0.4) = 0
    same, info = compress_model(model, cfg, fake_rows(2), tokenizer=CharTokenizer())
    assert same is model and info["removed"] == [] and info["layers_kept"] == 2


def test_bad_input_errors_name_the_model_and_reason():
    cfg = ModelCompressionConfig.model_validate({"prune_ratio": 0.5})
    with pytest.raises(ModelCompressionError, match="m: cannot remove 2 of 3 layers with 2 protected"):
        compress_model(tiny_model("llama", layers=3), cfg, fake_rows(2), tokenizer=CharTokenizer(), name="m")

    class NoLayers(nn.Module):
        config = type("C", (), {"num_hidden_layers": 4})()

        def __init__(self):
            super().__init__()
            self.blocks = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))

    with pytest.raises(ModelCompressionError, match="odd: cannot locate the decoder layer list"):
        decoder_layer_list(NoLayers(), "odd")
    from pydantic import ValidationError

    for bad in (0.0 - 0.1, 1.0):
        with pytest.raises(ValidationError):
            ModelCompressionConfig.model_validate({"prune_ratio": bad})


def test_calibration_rows_are_a_seeded_ordered_sample():
    rows = fake_rows(50)
    a = calibration_rows(rows, 10, seed=1)
    assert a == calibration_rows(rows, 10, seed=1) and a != calibration_rows(rows, 10, seed=2)
    assert [int(r["id"]) for r in a] == sorted(int(r["id"]) for r in a)
    assert calibration_rows(rows, 80) == rows


# ---------------------------------------------------------------------------------- the CLI
def test_cli_model_prune_writes_a_plain_checkpoint(micro_zoo, tmp_path, cli):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "pruned"
    code, stdout, err = cli("model", "prune", "--model", str(micro_zoo / "micro-llama-deep-domain"), "--ratio", "0.25",
                            "--mode", "block", "--merge", "dare", "--density", "0.5", "--samples", "8",
                            "--max-length", "48", "--calibration", "bundled:wordnet-lexcat", "--out", str(out))
    assert code == 0, err
    importance = json.loads((out / "importance.json").read_text())
    assert len(importance) == 8 and sum(e["removed"] for e in importance) == 2
    removed = [e["layer"] for e in importance if e["removed"]]
    assert removed[1] == removed[0] + 1  # a contiguous block
    assert all(e["merged_into"] == removed[0] - 1 for e in importance if e["removed"])
    assert "removed layers" in stdout and str(out) in stdout
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.num_hidden_layers == 6
    assert not list(out.glob("*.bin")) and list(out.glob("*.safetensors"))
    assert [p.name for p in tmp_path.iterdir()] == ["pruned"]  # no temp dirs left behind


@pytest.mark.parametrize("args, fragment", [
    (["--ratio", "1.0"], "--ratio must be in (0, 1), got 1.0"),
    (["--ratio", "0"], "--ratio must be in (0, 1), got 0.0"),
    (["--ratio", "0.5", "--density", "0"], "merge.density"),
    (["--ratio", "0.9"], "cannot remove 7 of 8 layers with 2 protected"),
    (["--ratio", "0.05"], "rounds to 0 layers"),
])
def test_cli_model_prune_bad_input_exits_2(micro_zoo, tmp_path, cli, args, fragment):
    code, out, err = cli("model", "prune", "--model", str(micro_zoo / "micro-llama-deep-domain"), *args,
                         "--samples", "4", "--calibration", "bundled:wordnet-lexcat", "--out", str(tmp_path / "o"))
    assert code == 2 and fragment in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_cli_model_prune_missing_model_exits_2(tmp_path, cli):
    code, out, err = cli("model", "prune", "--model", str(tmp_path / "nope"), "--ratio", "0.5", "--out", str(tmp_path / "o"))
    assert code == 2 and "model path not found" in err


def test_select_names_candidates_the_pruning_cannot_apply_to_before_any_trial(tmp_path, caplog):
    """Prune 0.75 of a 4-layer model with its first and last layers protected would remove 3 of
    the 2 removable: `damoc select` says so from the checkpoint's config before any trial, and
    names no candidate it can prune, nor any at a ratio that removes nothing."""
    import logging

    from transformers import LlamaConfig

    from damoc.config.load import validate_config
    from damoc.models.compress import unprunable
    from damoc.pipeline import warn_unprunable

    paths = {}
    for name, layers in (("shallow", 4), ("deep", 12)):
        paths[name] = str(tmp_path / name)
        LlamaConfig(num_hidden_layers=layers, hidden_size=16, intermediate_size=32, num_attention_heads=2,
                    num_key_value_heads=2, vocab_size=64).save_pretrained(paths[name])

    def config(own=None, **compression):
        own = own or {}
        candidates = [{"model": paths[name], "name": name,
                       **({"model_compression": own[name]} if name in own else {})} for name in ("shallow", "deep")]
        return validate_config({"name": "t", "candidates": candidates, "data": {"source": "bundled:wordnet-lexcat"},
                                "model_compression": compression})

    with caplog.at_level(logging.WARNING, logger="damoc"):
        messages = warn_unprunable(config(prune_ratio=0.75), paths)
    assert messages == ["shallow: cannot remove 3 of 4 layers with 2 protected (at most 2 removable)"]
    assert "shallow: cannot remove 3 of 4 layers" in caplog.text and "its proxy trial will fail" in caplog.text
    assert "deep:" not in caplog.text
    assert warn_unprunable(config(prune_ratio=0.5), paths) == []                      # 2 of 4: allowed
    assert warn_unprunable(config(prune_ratio=0.75, protect_first=False), paths) == []  # 3 removable
    assert warn_unprunable(config(prune_ratio=0.0), paths) == []
    # A candidate's own ratio counts: pruning only the deep one by 0.75 is fine, the shallow one not.
    assert warn_unprunable(config(own={"deep": {"prune_ratio": 0.75}}), paths) == []
    assert warn_unprunable(config(own={"shallow": {"prune_ratio": 0.75}}), paths) == messages
    assert unprunable(str(tmp_path / "missing"), config(prune_ratio=0.75).model_compression, "missing") is None


def test_a_checkpoints_digest_covers_what_loading_reads_and_not_its_records(tmp_path):
    """Cached trials are keyed by the candidate's digest. A zoo rebuilt with the same weights (its
    build record, damoc_zoo.json, has other timings) keeps it, as do docs and pickle weights damoc
    never loads; a tokenizer file of any name (tokenizer.model, merges.txt), the config or the
    weights change it."""
    from damoc.models.load import checkpoint_digest

    files = {"config.json": "{}", "model.safetensors": "w", "tokenizer.model": "sp", "merges.txt": "a b",
             "damoc_zoo.json": '{"stats": {"seconds": 101.5}}', "README.md": "# card", "pytorch_model.bin": "p",
             "stage.json": "{}"}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    (tmp_path / ".cache").mkdir()
    first = checkpoint_digest(str(tmp_path))
    assert set(json.loads(first)) == {"config.json", "model.safetensors", "tokenizer.model", "merges.txt"}
    for name, text in (("damoc_zoo.json", '{"stats": {"seconds": 97.2}}'), ("README.md", "# new card"),
                       ("pytorch_model.bin", "q")):
        (tmp_path / name).write_text(text)
        assert checkpoint_digest(str(tmp_path)) == first, name
    for name in ("tokenizer.model", "merges.txt", "config.json", "model.safetensors"):
        before = checkpoint_digest(str(tmp_path))
        (tmp_path / name).write_text(files[name] + " changed")
        assert checkpoint_digest(str(tmp_path)) != before, name
    assert checkpoint_digest("org/model") == "hub:org/model"



def test_a_trial_process_imports_peft_only_when_it_merges():
    """Every fresh trial process imports the trial and model-compression modules; importing peft
    with them cost about 1.8 s per process on 2 cores (the merge kernels are peft's), for
    selections that merge nothing. A fresh interpreter shows what the imports pull in, and that a
    merge still gets peft's kernels when it runs: TIES elects the sign of each entry's total and
    averages the deltas that agree with it (ties go to +)."""
    import subprocess
    import sys

    code = """
import sys
import damoc.trials.trial, damoc.models.compress, damoc.models.merge, damoc.trials.finetune
print(sorted({m.split('.')[0] for m in sys.modules} & {'peft', 'transformers'}))
import torch
merged = damoc.models.merge.merge_deltas([torch.tensor([1.0, -2.0, 3.0]), torch.tensor([1.0, 2.0, -3.0])], 'ties')
print(merged.tolist(), 'peft' in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split("\n")[:2] == ["[]", "[1.0, 2.0, 3.0] True"], out.stdout

"""The candidates of the offline zoo: architecture, size, pretraining mix and budget.

The zoo stands in for the hub's open LLMs on a machine with no network, and is designed for the
question damoc answers: candidates differ in what decides fine-tuned quality (width, depth, how
much and which text they were pretrained on) so that their zero-shot ranking on the bundled tasks
is not their ranking after fine-tuning (in DaMoC's experiments Llama3.1-8B is 8th zero-shot and 2nd
after fine-tuning). Measured on wordnet-lexcat (benchmarks/README.md): the smallest candidate,
pretrained longest on domain text, is 4th zero-shot and 1st after full fine-tuning; the largest,
wide candidates pretrained on code and general text fine-tune worst (size vs fine-tuned Spearman
-0.76). Several candidates are deep enough (>= 8 layers) for layer pruning to matter.

Every architecture is a stock transformers class built from its config (`AutoConfig.for_model`),
so checkpoints load with plain `AutoModelForCausalLM.from_pretrained`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional

CORPORA = ("wordnet-general", "wordnet-domain", "jargon", "python-stdlib")

# Config quirks of the families used, kept as data rather than an if-chain. Mistral's default
# sliding window and Gemma's default head_dim (256) do not fit tiny models; GPT-2 names its MLP
# width n_inner and has no grouped-query attention.
FAMILY_QUIRKS: dict[str, dict[str, Any]] = {
    "mistral": {"extra": {"sliding_window": None}},
    "qwen2": {"extra": {"use_sliding_window": False}},
    "gemma": {"head_dim_from_heads": True},
    "gpt2": {"rename": {"intermediate_size": "n_inner"}, "drop": ("num_key_value_heads",)},
}


@dataclass(frozen=True)
class CandidateSpec:
    name: str
    model_type: str                      # transformers model_type: llama, qwen2, mistral, gemma, phi3, gpt2
    hidden_size: int
    layers: int
    heads: int
    corpus_mix: dict[str, float]         # corpus -> sampling weight
    steps: int                           # optimizer steps of pretraining
    kv_heads: Optional[int] = None
    intermediate_size: Optional[int] = None
    learning_rate: float = 2e-3
    batch_size: int = 16
    seq_len: int = 128
    seed: int = 0
    notes: str = ""
    tie_word_embeddings: Optional[bool] = None  # None: the family's default

    @property
    def pretraining_tokens(self) -> int:
        return self.steps * self.batch_size * self.seq_len

    def to_dict(self) -> dict:
        return asdict(self)

    def hf_config(self, vocab_size: int, bos_id: int, eos_id: int, pad_id: int, max_positions: int = 512):
        """The transformers config for this candidate (any family transformers knows)."""
        from transformers import AutoConfig

        quirks = FAMILY_QUIRKS.get(self.model_type, {})
        kwargs: dict[str, Any] = {
            "vocab_size": vocab_size,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads or self.heads,
            "intermediate_size": self.intermediate_size or _mlp_width(self.hidden_size, self.model_type),
            "max_position_embeddings": max_positions,
            "bos_token_id": bos_id,
            "eos_token_id": eos_id,
            "pad_token_id": pad_id,
        }
        if self.tie_word_embeddings is not None:
            kwargs["tie_word_embeddings"] = self.tie_word_embeddings
        if quirks.get("head_dim_from_heads"):
            kwargs["head_dim"] = self.hidden_size // self.heads
        for old, new in quirks.get("rename", {}).items():
            kwargs[new] = kwargs.pop(old)
        for key in quirks.get("drop", ()):
            kwargs.pop(key, None)
        kwargs.update(quirks.get("extra", {}))
        return AutoConfig.for_model(self.model_type, **kwargs)


def _mlp_width(hidden: int, model_type: str) -> int:
    # Gated MLPs (SwiGLU/GeGLU) use ~8/3 x hidden for the same parameter count as GPT-2's 4 x hidden.
    if model_type == "gpt2":
        return 4 * hidden
    return int(round(8 * hidden / 3 / 16)) * 16


def _mix(**weights: float) -> dict[str, float]:
    names = {k.replace("_", "-"): v for k, v in weights.items()}
    unknown = set(names) - set(CORPORA)
    assert not unknown, unknown
    return names


# The demo zoo: 8 candidates, 6 architecture classes. Budgets (steps) keep the whole zoo within
# ~12 minutes on 2 CPU cores (two candidates pretrain at a time, one thread each).
DEMO: tuple[CandidateSpec, ...] = (
    CandidateSpec("qwen2-tiny-domain", "qwen2", 96, 6, 4, _mix(wordnet_domain=0.85, wordnet_general=0.15), steps=500,
                  notes="small, pretrained mostly on task-like domain text: strong zero-shot, little capacity"),
    CandidateSpec("llama-deep-domain", "llama", 128, 12, 4, _mix(wordnet_domain=0.6, wordnet_general=0.4), steps=200, kv_heads=2,
                  notes="deep and narrow, domain text: good zero-shot; deep enough for pruning"),
    CandidateSpec("phi3-mixed", "phi3", 160, 8, 5, _mix(wordnet_domain=0.3, wordnet_general=0.3, jargon=0.2, python_stdlib=0.2), steps=200,
                  notes="mid-size, a bit of everything"),
    CandidateSpec("gpt2-jargon", "gpt2", 192, 8, 6, _mix(jargon=0.5, wordnet_general=0.5), steps=140,
                  notes="GPT-2 style, computing jargon and general dictionary text"),
    CandidateSpec("qwen2-deep-general", "qwen2", 128, 10, 4, _mix(wordnet_general=0.6, jargon=0.2, wordnet_domain=0.2), steps=170,
                  notes="deep, mostly general dictionary text"),
    CandidateSpec("mistral-wide-code", "mistral", 256, 6, 8, _mix(python_stdlib=0.7, jargon=0.3), steps=130, kv_heads=4,
                  notes="wide, pretrained on source code: weak zero-shot, strong after fine-tuning"),
    CandidateSpec("gemma-wide-general", "gemma", 256, 6, 4, _mix(wordnet_general=0.5, jargon=0.3, python_stdlib=0.2), steps=130,
                  notes="wide, general text without the task's domain"),
    CandidateSpec("llama-wide-shallow", "llama", 320, 4, 8, _mix(wordnet_general=0.4, python_stdlib=0.4, jargon=0.2), steps=120, kv_heads=4,
                  notes="widest and shallowest"),
)

# The micro zoo: the same architecture spread at toy sizes, for tests (<= 60 s on 2 cores).
MICRO: tuple[CandidateSpec, ...] = tuple(
    CandidateSpec(f"micro-{spec.name}", spec.model_type, hidden, layers, heads, spec.corpus_mix,
                  steps=steps, kv_heads=None, batch_size=8, seq_len=64, learning_rate=3e-3, notes=spec.notes)
    for spec, hidden, layers, heads, steps in [
        (DEMO[0], 32, 2, 2, 40), (DEMO[1], 32, 8, 2, 20), (DEMO[2], 48, 4, 2, 20),
        (DEMO[3], 48, 4, 2, 20), (DEMO[5], 64, 2, 4, 20), (DEMO[6], 64, 2, 2, 20),
    ]
)

ZOO_SIZES: dict[str, dict[str, Any]] = {
    "micro": {"candidates": MICRO, "vocab_size": 1024, "tokenizer_chars": 600_000, "zero_shot_rows": 64, "max_positions": 256},
    "demo": {"candidates": DEMO, "vocab_size": 4096, "tokenizer_chars": 4_000_000, "zero_shot_rows": 200, "max_positions": 512},
}

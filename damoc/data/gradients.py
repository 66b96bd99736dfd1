"""Scorers that need a short fine-tune of the scorer LM: LESS, MoDS's necessity step and Cherry's
"pre-experienced" IFD (REFERENCE section 1, item 1).

All of them train a LoRA adapter on a *copy* of the scorer (`brief_finetune`; the caller's model is
never touched) with damoc's own training loop (`damoc.trials.finetune.finetune`), in the text
layout the scorer's losses read: `question_context(prompt) + response` after the scorer's BOS
(`ScorerFormat`), so a brief fine-tune teaches exactly what `ScorerLM.answer_losses` then measures.
The adapter goes on every linear layer except the output head (peft's `target_modules="all-linear"`,
found by type, not by model family).

Every function is deterministic for its `seed`: it seeds torch inside `torch.random.fork_rng` (so
the caller's global RNG state is restored afterwards) and draws its subsets from a seeded numpy
generator; the LESS projection is generated from per-chunk seeds.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from damoc.data.lm import ScorerLM, question_context
from damoc.data.records import Record

# Rows of the random projection generated at once: 8192 x 512 float32 = 16 MiB per chunk.
DEFAULT_CHUNK_ROWS = 8192
# LESS trains its warm-up adapter for 4 epochs on the warm-up subset (Xia et al. 2024, section 4.1).
LESS_WARMUP_EPOCHS = 4
# Tokens of a row the brief fine-tunes and LESS's gradients read (at most the scorer's context): the
# response's first MAX_SEQ_LENGTH - 1 tokens and EOS, the question cut from the left to fill the rest.
MAX_SEQ_LENGTH = 256


class ScorerFormat:
    """The scorer's text layout as a `PromptFormat` for `build_examples`: BOS + the question as
    `question_context` writes it, then the response tokenized on its own (as `token_nll` reads an
    answer), plus EOS at the end of a training example. Chat templates are not used: the scorer's
    losses are computed on plain text."""

    def __init__(self, lm: ScorerLM):
        self.lm = lm

    def _ids(self, text: str) -> list[int]:
        return list(self.lm.tokenizer(text, add_special_tokens=False)["input_ids"])

    def context_ids(self, record: Record) -> list[int]:
        return self.lm.bos + self._ids(question_context(record["prompt"]))

    def continuation_ids(self, record: Record, text: str, *, final: bool) -> list[int]:
        eos = self.lm.tokenizer.eos_token_id
        return self._ids(text) + ([eos] if final and eos is not None else [])


# ---------------------------------------------------------------------------------- fine-tuning
def brief_finetune(lm: ScorerLM, records: Sequence[Record], *, steps: int, learning_rate: float, lora_r: int = 8,
                   lora_alpha: Optional[float] = None, batch_size: int = 8, max_seq_length: int = MAX_SEQ_LENGTH,
                   seed: int = 0) -> ScorerLM:
    """A copy of the scorer with a LoRA adapter (rank `lora_r`, alpha `lora_alpha`, default 2 x rank,
    no dropout) trained for `steps` optimizer steps on `records` (AdamW, warm-up and cosine decay:
    damoc's fine-tuning loop), merged into the copy's weights and returned as a ScorerLM in eval
    mode. The caller's model is deep-copied first and never modified (memory: one more copy of the
    scorer's weights while the returned model lives). Each row is read as at most `max_seq_length`
    tokens (default MAX_SEQ_LENGTH = 256, and at most the scorer's context): the response's first
    max_seq_length - 1 tokens and EOS, the question cut from the left to fill the rest."""
    _check_records(records, "brief_finetune: records")
    _check_training(steps=steps, learning_rate=learning_rate, lora_r=lora_r, batch_size=batch_size,
                    max_seq_length=max_seq_length, where="brief_finetune")
    model, _ = _lora_finetune(lm, records, steps=steps, learning_rate=learning_rate, lora_r=lora_r,
                              lora_alpha=lora_alpha, batch_size=batch_size, max_seq_length=max_seq_length, seed=seed)
    merged = model.merge_and_unload()
    return ScorerLM(merged.eval(), lm.tokenizer, name=f"{lm.name}+lora{lora_r}x{steps}", max_length=lm.max_length)


def _lora_finetune(lm: ScorerLM, records: Sequence[Record], *, steps: int, learning_rate: float, lora_r: int,
                   lora_alpha: Optional[float], batch_size: int, max_seq_length: int, seed: int):
    """(peft model on a copy of the scorer, the Engine whose AdamW state the training left)."""
    from peft import LoraConfig, get_peft_model

    from damoc.trials.finetune import Engine, finetune

    with _seeded(seed):
        model = get_peft_model(copy.deepcopy(lm.model), LoraConfig(
            r=lora_r, lora_alpha=lora_alpha if lora_alpha is not None else 2 * lora_r, lora_dropout=0.0,
            target_modules="all-linear", task_type="CAUSAL_LM"))
        engine = Engine(model, learning_rate, weight_decay=0.0, accumulation=1)
        finetune(model, lm.tokenizer, list(records), learning_rate=learning_rate, max_steps=steps, batch_size=batch_size,
                 max_seq_length=min(max_seq_length, lm.max_length), seed=seed, fmt=ScorerFormat(lm), engine=engine)
    model.eval()
    return model, engine


# ---------------------------------------------------------------------------------- MoDS, Cherry
def seed_model(lm: ScorerLM, seed_records: Sequence[Record], *, steps: int, learning_rate: float, seed: int = 0,
               lora_r: int = 8, batch_size: int = 8, max_seq_length: int = MAX_SEQ_LENGTH,
               where: str = "seed_model") -> ScorerLM:
    """MoDS's seed model: the scorer briefly fine-tuned on the seed set (`brief_finetune`)."""
    _check_records(seed_records, f"{where}: seed_records")
    _check_training(steps=steps, learning_rate=learning_rate, lora_r=lora_r, batch_size=batch_size,
                    max_seq_length=max_seq_length, where=where)
    return brief_finetune(lm, seed_records, steps=steps, learning_rate=learning_rate, lora_r=lora_r,
                          batch_size=batch_size, max_seq_length=max_seq_length, seed=seed)


def necessity_losses(lm: ScorerLM, seed_records: Sequence[Record], candidate_records: Sequence[Record], *,
                     steps: int, learning_rate: float, seed: int = 0, lora_r: int = 8, batch_size: int = 8,
                     max_seq_length: int = MAX_SEQ_LENGTH, scoring_batch_size: int = 16) -> np.ndarray:
    """MoDS's necessity step: fine-tune the scorer briefly on the seed set (`seed_model`), then
    the mean answer loss L(A|Q) of every candidate row under that model. High = the seed model
    answers the row badly = the row is necessary (MoDS adds those above a threshold).

    MoDS proper lets the seed model generate an answer to each candidate question and scores the
    (question, generated answer) pair with a reward model. We use the reference answer's loss under
    the seed model instead: no generation (slow on CPU), and no reward model (none is available
    offline); it plays the same role, "how far is the seed model from answering this well", and is
    measured against the dataset's own answer rather than a reward model's taste.

    This is the in-process reference; the stage (damoc.data.filters) saves `seed_model` with
    `save_merged` and reads the same losses (`loss_conditioned`) from damoc.data.scorers.IFDScorer
    on its engine."""
    _check_records(seed_records, "necessity_losses: seed_records")
    _check_records(candidate_records, "necessity_losses: candidate_records")
    seeded = seed_model(lm, seed_records, steps=steps, learning_rate=learning_rate, lora_r=lora_r,
                        batch_size=batch_size, max_seq_length=max_seq_length, seed=seed, where="necessity_losses")
    return seeded.answer_losses([r["prompt"] for r in candidate_records], [r["response"] for r in candidate_records],
                                batch_size=scoring_batch_size, conditioned_only=True)[0]


def pre_experienced_model(lm: ScorerLM, records: Sequence[Record], pre_experience_indices: Sequence[int], *,
                          steps: int, learning_rate: float, seed: int = 0, lora_r: int = 8, batch_size: int = 8,
                          max_seq_length: int = MAX_SEQ_LENGTH, where: str = "pre_experienced_model") -> ScorerLM:
    """Cherry's "pre-experienced" model: the scorer briefly fine-tuned on
    records[pre_experience_indices] (`brief_finetune`)."""
    _check_records(records, f"{where}: records")
    indices = _check_indices(pre_experience_indices, len(records), f"{where}: pre_experience_indices")
    _check_training(steps=steps, learning_rate=learning_rate, lora_r=lora_r, batch_size=batch_size,
                    max_seq_length=max_seq_length, where=where)
    return brief_finetune(lm, [records[i] for i in indices], steps=steps, learning_rate=learning_rate,
                          lora_r=lora_r, batch_size=batch_size, max_seq_length=max_seq_length, seed=seed)


def cherry_ifd(lm: ScorerLM, records: Sequence[Record], pre_experience_indices: Sequence[int], *, steps: int,
               learning_rate: float, seed: int = 0, lora_r: int = 8, batch_size: int = 8, max_seq_length: int = MAX_SEQ_LENGTH,
               scoring_batch_size: int = 16) -> np.ndarray:
    """Cherry LLM's IFD = L(A|Q) / L(A) of every row, under the "pre-experienced" model
    (`pre_experienced_model`; Cherry picks that small diverse subset by K-means on instruction
    embeddings; the caller chooses it, e.g. with K-center greedy).

    This is the in-process reference; the stage saves `pre_experienced_model` with `save_merged` and
    reads the same IFD from damoc.data.scorers.IFDScorer on its engine."""
    experienced = pre_experienced_model(lm, records, pre_experience_indices, steps=steps, learning_rate=learning_rate,
                                        lora_r=lora_r, batch_size=batch_size, max_seq_length=max_seq_length, seed=seed,
                                        where="cherry_ifd")
    conditioned, alone = experienced.answer_losses([r["prompt"] for r in records], [r["response"] for r in records],
                                                   batch_size=scoring_batch_size)
    return conditioned / alone


def save_merged(lm: ScorerLM, directory) -> None:
    """A fine-tuned (merged) scorer as an ordinary checkpoint: config, safetensors weights and the
    tokenizer, so any scorer class (e.g. IFDScorer) loads it like the scorer itself."""
    lm.model.save_pretrained(str(directory), safe_serialization=True)
    lm.tokenizer.save_pretrained(str(directory))


# ---------------------------------------------------------------------------------- LESS
@dataclass
class AdamMoments:
    """AdamW's first and second moment estimates of the warm-up adapter, flattened in parameter
    order, and its betas and eps: what turns a gradient into LESS's Adam update direction."""

    m: "torch.Tensor"
    v: "torch.Tensor"
    beta1: float
    beta2: float
    eps: float

    def direction(self, g):
        """m' / (sqrt(v') + eps), m' = b1 m + (1 - b1) g, v' = b2 v + (1 - b2) g^2."""
        import torch

        return (self.beta1 * self.m + (1 - self.beta1) * g) / \
            (torch.sqrt(self.beta2 * self.v + (1 - self.beta2) * g * g) + self.eps)


def less_scores(lm: ScorerLM, train_records: Sequence[Record], validation_records: Sequence[Record], *,
                warmup_ratio: float = 0.05, warmup_steps: Optional[int] = None, lora_r: int = 8, proj_dim: int = 512,
                learning_rate: float = 2e-4, seed: int = 0, batch_size: int = 8, max_seq_length: int = MAX_SEQ_LENGTH,
                gradient_block: int = 32, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> np.ndarray:
    """LESS (Xia et al. 2024) influence scores, one per training row (higher = its gradient points
    where the validation rows' gradients point).

    1. Warm-up (`less_warmup`): a LoRA adapter (rank `lora_r`) on a copy of the scorer is trained
       with AdamW on a seeded random `warmup_ratio` of the training rows, for `warmup_steps` steps
       (default: 4 epochs of that subset, as LESS); the optimizer's moment estimates m, v are kept.
    2. Gradient features (`less_features`), per example, w.r.t. the LoRA parameters only (P of
       them), loss = mean response-token cross-entropy: training rows get the Adam update direction
       m' / (sqrt(v') + eps), m' = b1 m + (1 - b1) g, v' = b2 v + (1 - b2) g^2 (the paper's formula,
       without bias correction like LESS's code; its code puts eps inside the square root, the
       paper outside, as here); validation rows get the plain (SGD) gradient g.
    3. Both are projected to `proj_dim` by the same seeded Rademacher matrix (`random_projection`)
       and L2-normalised; the score is the mean cosine of a training row to the validation rows
       (`less_influence`; LESS takes the mean over a task's validation rows, then the max over
       tasks; one task here).

    Simplifications: one warm-up checkpoint (LESS sums the scores of 4 epoch checkpoints weighted by
    their learning rates) and a small default rank (LESS uses r = 128). Rows are read as at most
    `max_seq_length` tokens (default 256, at most the scorer's context) in the warm-up and the
    gradients alike: the response's first max_seq_length - 1 tokens and EOS, the question cut from
    the left to fill the rest (damoc.trials.finetune.build_examples).

    Per-example gradients are computed one example at a time (a forward and backward pass each, as
    LESS's own code does with batch size 1): exact per-example losses with no padding interplay, any
    Hugging Face architecture with any peft adapter works, and memory stays at one P-vector per
    example. torch.func's vmap over a whole HF model breaks on data-dependent control flow and
    in-place ops in some architectures, and its speed-up matters less than robustness for the
    small scorers this is run with.

    Memory: the LoRA state (parameters, AdamW's m and v, and flat copies of m and v: about 5P
    floats), a block of `gradient_block` gradient vectors (gradient_block x P float32) and one
    chunk of the projection, `chunk_rows` x `proj_dim` float32 (16 MiB at the defaults): the
    P x proj_dim matrix never exists at once.

    This is the in-process reference; the stage runs the warm-up once in the driver, saves it with
    `save_less_checkpoint` and computes the features with damoc.data.scorers.LessGradientScorer on
    its engine (the same `less_features`).
    """
    _check_records(train_records, "less_scores: train_records")
    if not validation_records:
        raise ValueError("less_scores: validation_records is empty; LESS needs target-task examples to score against")
    _check_records(validation_records, "less_scores: validation_records")
    _check_positive("less_scores", proj_dim=proj_dim, gradient_block=gradient_block, chunk_rows=chunk_rows)
    model, adam = less_warmup(lm, train_records, warmup_ratio=warmup_ratio, warmup_steps=warmup_steps, lora_r=lora_r,
                              learning_rate=learning_rate, seed=seed, batch_size=batch_size,
                              max_seq_length=max_seq_length, where="less_scores")
    settings = dict(proj_dim=proj_dim, seed=seed, max_seq_length=max_seq_length, gradient_block=gradient_block,
                    chunk_rows=chunk_rows)
    train = less_features(model, lm, train_records, adam, **settings)
    validation = less_features(model, lm, validation_records, None, **settings)
    return less_influence(train, validation)


def less_warmup(lm: ScorerLM, train_records: Sequence[Record], *, warmup_ratio: float = 0.05,
                warmup_steps: Optional[int] = None, lora_r: int = 8, learning_rate: float = 2e-4, seed: int = 0,
                batch_size: int = 8, max_seq_length: int = MAX_SEQ_LENGTH, where: str = "less_warmup"):
    """LESS step 1: (the peft model with the warm-up adapter, on a copy of the scorer; its
    AdamMoments). The warm-up rows are a seeded random `warmup_ratio` of `train_records`."""
    _check_records(train_records, f"{where}: train_records")
    if not (isinstance(warmup_ratio, (int, float)) and 0 < warmup_ratio <= 1):
        raise ValueError(f"{where}: warmup_ratio must be in (0, 1], got {warmup_ratio!r}")
    if warmup_steps is not None and not (_is_int(warmup_steps) and warmup_steps >= 1):
        raise ValueError(f"{where}: warmup_steps must be a positive integer or None, got {warmup_steps!r}")
    _check_training(steps=warmup_steps or 1, learning_rate=learning_rate, lora_r=lora_r, batch_size=batch_size,
                    max_seq_length=max_seq_length, where=where)
    import torch

    n = len(train_records)
    n_warm = max(1, math.ceil(warmup_ratio * n))
    steps = warmup_steps if warmup_steps is not None else max(1, math.ceil(LESS_WARMUP_EPOCHS * n_warm / batch_size))
    warm = sorted(np.random.default_rng(seed).choice(n, size=n_warm, replace=False).tolist())
    model, engine = _lora_finetune(lm, [train_records[i] for i in warm], steps=steps, learning_rate=learning_rate,
                                   lora_r=lora_r, lora_alpha=None, batch_size=batch_size,
                                   max_seq_length=max_seq_length, seed=seed)
    params = _trainable(model)
    group = engine.optimizer.param_groups[0]
    state = engine.optimizer.state
    moments = [torch.cat([state[p][key].reshape(-1) if p in state else torch.zeros(p.numel(), device=p.device)
                          for p in params]).float() for key in ("exp_avg", "exp_avg_sq")]
    (beta1, beta2), eps = group["betas"], group["eps"]
    return model, AdamMoments(moments[0], moments[1], float(beta1), float(beta2), float(eps))


def less_features(model, lm: ScorerLM, records: Sequence[Record], adam: Optional[AdamMoments], *, proj_dim: int = 512,
                  seed: int = 0, max_seq_length: int = MAX_SEQ_LENGTH, gradient_block: int = 32,
                  chunk_rows: int = DEFAULT_CHUNK_ROWS, desc: Optional[str] = "gradient features"):
    """LESS step 2: (len(records), proj_dim) float32 tensor, each row's projected, L2-normalised
    gradient of its own response loss w.r.t. the adapter's parameters, Adam-transformed when
    `adam` is given (training rows), plain otherwise (validation rows). Each row's feature depends
    only on that row, so any split of the rows into batches gives the same features (up to float
    summation order). `desc` None: no progress bar."""
    from damoc.trials.finetune import build_examples

    _check_positive("less_features", proj_dim=proj_dim, gradient_block=gradient_block, chunk_rows=chunk_rows)
    examples = build_examples(lm.tokenizer, records, max_seq_length=min(max_seq_length, lm.max_length),
                              fmt=ScorerFormat(lm))
    projected = _projected_gradients(model, _trainable(model), examples, lm.pad_id,
                                     adam.direction if adam is not None else None, proj_dim=proj_dim, seed=seed,
                                     block=gradient_block, chunk_rows=chunk_rows, desc=desc)
    return projected / projected.norm(dim=1, keepdim=True).clamp_min(1e-12)


def less_influence(train_features, validation_features) -> np.ndarray:
    """LESS step 3: the mean cosine of each training row's feature to the validation rows' (both
    L2-normalised, numpy arrays or tensors). Memory: the (n_train, n_validation) product."""
    import torch

    train, validation = torch.as_tensor(train_features), torch.as_tensor(validation_features)
    return (train @ validation.T).mean(dim=1).double().cpu().numpy()


LESS_SETTINGS = "less.json"


def save_less_checkpoint(directory, model, adam: AdamMoments, *, base: str, settings: dict) -> None:
    """What LESS's gradient features need, in `directory` (safetensors only): the base scorer's path
    (`less.json`, with the projection `settings`), the warm-up adapter (`adapter/`, peft's
    safetensors), and Adam's m and v with betas and eps (`adam.safetensors`, `less.json`)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    model.save_pretrained(str(directory / "adapter"), safe_serialization=True)
    save_file({"m": adam.m.detach().cpu().contiguous(), "v": adam.v.detach().cpu().contiguous()},
              str(directory / "adam.safetensors"))
    (directory / LESS_SETTINGS).write_text(json.dumps(
        {"base": base, "beta1": adam.beta1, "beta2": adam.beta2, "eps": adam.eps, **settings}, sort_keys=True))


def load_less_checkpoint(directory, *, trust_remote_code: bool = False, max_length: Optional[int] = None):
    """(scorer LM, peft model with the warm-up adapter trainable on it, AdamMoments, settings) from
    a `save_less_checkpoint` directory."""
    from peft import PeftModel
    from safetensors.torch import load_file

    directory = Path(directory)
    settings = json.loads((directory / LESS_SETTINGS).read_text())
    lm = ScorerLM.load(settings.pop("base"), trust_remote_code=trust_remote_code, max_length=max_length)
    model = PeftModel.from_pretrained(lm.model, str(directory / "adapter"), is_trainable=True).eval()
    moments = load_file(str(directory / "adam.safetensors"), device=str(lm.device))
    adam = AdamMoments(moments["m"], moments["v"], settings.pop("beta1"), settings.pop("beta2"), settings.pop("eps"))
    return lm, model, adam, settings


def _projected_gradients(model, params, examples, pad_id: int, transform, *, proj_dim: int, seed: int, block: int,
                         chunk_rows: int, desc: Optional[str] = "gradient features"):
    """(len(examples), proj_dim): each example's flattened gradient of its own loss w.r.t.
    `params`, optionally transformed, then projected; gradients are projected `block` at a time."""
    import torch

    from damoc.log import progress
    from damoc.trials.finetune import collate

    device = params[0].device
    total = sum(p.numel() for p in params)
    out = torch.empty((len(examples), proj_dim), dtype=torch.float32)
    buffer = torch.empty((min(block, len(examples)), total), dtype=torch.float32, device=device)
    bar = progress(total=len(examples), desc=desc, unit="row") if desc else None
    with torch.enable_grad():
        for start in range(0, len(examples), block):
            chunk = examples[start:start + block]
            for i, example in enumerate(chunk):
                model.zero_grad(set_to_none=True)
                batch = {k: t.to(device) for k, t in collate([example], pad_id).items()}
                loss = model(**batch).loss
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"gradient features: loss is {loss.item()} for example {start + i}")
                loss.backward()
                grad = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float()
                                  for p in params])
                buffer[i] = transform(grad) if transform is not None else grad
                if bar is not None:
                    bar.update(1)
            out[start:start + len(chunk)] = random_projection(buffer[:len(chunk)], proj_dim, seed=seed,
                                                              chunk_rows=chunk_rows).cpu()
    model.zero_grad(set_to_none=True)
    if bar is not None:
        bar.close()
    return out


# ---------------------------------------------------------------------------------- projection
def projection_chunk(index: int, rows: int, proj_dim: int, *, seed: int):
    """Rows [index * chunk_rows, index * chunk_rows + rows) of the projection matrix: a Rademacher
    (+-1 / sqrt(proj_dim)) block of shape (rows, proj_dim), float32, from its own generator seeded
    by (seed, index), so any chunk is reproducible without generating the others."""
    import torch

    state = np.random.SeedSequence([int(seed) % (1 << 64), int(index)]).generate_state(2, np.uint32)
    generator = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
    signs = torch.randint(0, 2, (rows, proj_dim), generator=generator, dtype=torch.float32)
    return signs.mul_(2).sub_(1).div_(math.sqrt(proj_dim))


def random_projection(vectors, proj_dim: int, *, seed: int, chunk_rows: int = DEFAULT_CHUNK_ROWS):
    """`vectors` (n, P) times the seeded P x proj_dim Rademacher matrix R, where R is the vertical
    stack of `projection_chunk(c, rows_c, proj_dim, seed=seed)` over chunks of `chunk_rows` rows
    (the last one shorter). Only one chunk exists at a time: besides the input and the (n, proj_dim)
    output, memory is at most chunk_rows x (proj_dim + n) float32 (the chunk, and a contiguous copy
    of the input's column slice). E[|xR|^2] = |x|^2 (Johnson-Lindenstrauss)."""
    import torch

    if vectors.dim() != 2:
        raise ValueError(f"random_projection: expected a 2-d (n, P) tensor, got shape {tuple(vectors.shape)}")
    if not (_is_int(proj_dim) and proj_dim >= 1) or not (_is_int(chunk_rows) and chunk_rows >= 1):
        raise ValueError(f"random_projection: proj_dim and chunk_rows must be positive integers, "
                         f"got {proj_dim!r} and {chunk_rows!r}")
    vectors = vectors.float()
    out = torch.zeros((vectors.shape[0], proj_dim), dtype=torch.float32, device=vectors.device)
    for index, lo in enumerate(range(0, vectors.shape[1], chunk_rows)):
        hi = min(lo + chunk_rows, vectors.shape[1])
        out.addmm_(vectors[:, lo:hi], projection_chunk(index, hi - lo, proj_dim, seed=seed).to(vectors.device))
    return out


# ---------------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def _seeded(seed: int):
    """torch seeded with `seed` inside, the caller's RNG state (CPU and initialised CUDA devices)
    restored after."""
    import torch

    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    devices = list(range(torch.cuda.device_count())) if cuda else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _trainable(model) -> list:
    return [p for p in model.parameters() if p.requires_grad]


def _check_positive(where: str, **values) -> None:
    for name, value in values.items():
        if not (_is_int(value) and value >= 1):
            raise ValueError(f"{where}: {name} must be a positive integer, got {value!r}")


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_records(records, where: str) -> None:
    if records is None or len(records) == 0:
        raise ValueError(f"{where} is empty")
    for i, record in enumerate(records):
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str) \
                or not isinstance(record.get("response"), str) or not record["response"].strip():
            raise ValueError(f"{where}[{i}] is not a record with a text prompt and a non-empty response")


def _check_indices(indices, n: int, where: str) -> list[int]:
    indices = list(np.asarray(indices).reshape(-1).tolist()) if indices is not None else []
    if not indices:
        raise ValueError(f"{where} is empty")
    if not all(_is_int(i) for i in indices):
        raise ValueError(f"{where} must be integers, got {indices[:5]}")
    bad = [i for i in indices if not 0 <= i < n]
    if bad:
        raise ValueError(f"{where}: {bad[0]} is out of range for {n} records")
    if len(set(indices)) != len(indices):
        raise ValueError(f"{where} has repeated indices")
    return indices


def _check_training(*, steps, learning_rate, lora_r, batch_size, max_seq_length, where: str) -> None:
    if not (_is_int(steps) and steps >= 1):
        raise ValueError(f"{where}: steps must be a positive integer, got {steps!r}")
    if not (isinstance(learning_rate, (int, float)) and not isinstance(learning_rate, bool)
            and math.isfinite(learning_rate) and learning_rate > 0):
        raise ValueError(f"{where}: learning_rate must be a positive number, got {learning_rate!r}")
    if not (_is_int(lora_r) and lora_r >= 1):
        raise ValueError(f"{where}: lora_r must be a positive integer, got {lora_r!r}")
    if not (_is_int(batch_size) and batch_size >= 1):
        raise ValueError(f"{where}: batch_size must be a positive integer, got {batch_size!r}")
    if not (_is_int(max_seq_length) and max_seq_length >= 2):
        raise ValueError(f"{where}: max_seq_length must be an integer >= 2, got {max_seq_length!r}")

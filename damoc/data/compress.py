"""The data-compression stage: filter the training rows, compress their tokens, gate the
compressed text by BERTScore and rewrite what fails. Validation and test rows are never touched.

    rows --filter (scorers x selector, damoc.data.filters)--> kept rows
         --key-token compression (damoc.data.tokens)--> shorter rows
         --BERTScore gate + rewrite (damoc.data.rewrite)--> rows and stats.json

Scorers run on the configured engine (Ray Data actors or in-process, damoc.data.engine) and
their outputs are cached by fingerprint (model weights, settings, rows), so a crashed run resumes
without re-scoring and a sweep over keep ratios scores once. The methods that fine-tune the scorer
first (LESS, MoDS, Cherry) train once in this process, save the result under CACHE/data-finetunes
(also cached by fingerprint), and score their rows with it on the engine like every other scorer.
Every sub-stage's wall time, rows and tokens go into the stats the report's cost accounting reads.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import shutil
import tempfile
import time
import weakref
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from damoc import fingerprint as fp
from damoc.config.schema import DataCompressionConfig
from damoc.data.filters import FILTERS, NEEDS, method_params
from damoc.data.load import LoadedData
from damoc.errors import DamocError, DataError
from damoc.io import atomic_dir

log = logging.getLogger("damoc.data")
SCORES_STAGE = "data-scores"
FINETUNE_STAGE = "data-finetunes"


# ------------------------------------------------------------------------------ models
class ScorerModels:
    """The scorer models a config names, resolved (zoo references built, SmolLM2 imported) only
    when a method asks for them."""

    def __init__(self, cfg: DataCompressionConfig, cache_root: Path):
        self.cfg = cfg
        self.cache_root = cache_root
        self._paths: dict[str, Optional[str]] = {}

    def path(self, role: str) -> Optional[str]:
        """Local path or hub id for role scorer | instruct | embedding | rewrite (None: the
        embedding default, the offline MiniLM)."""
        if role not in self._paths:
            from damoc.data.lm import resolve_scorer_path
            from damoc.models.load import resolve_model_path

            cfg = self.cfg
            if role == "scorer":
                self._paths[role] = resolve_scorer_path(cfg.scorer_model, self.cache_root)
            elif role == "instruct":
                self._paths[role] = resolve_scorer_path(cfg.instruct_model, self.cache_root) if cfg.instruct_model \
                    else self.path("scorer")
            elif role == "rewrite":
                self._paths[role] = resolve_model_path(cfg.rewrite.model, cache_root=self.cache_root) \
                    if cfg.rewrite.model else self.path("instruct")
            elif role == "embedding":
                self._paths[role] = cfg.embedding_model
            else:
                raise KeyError(role)
        return self._paths[role]

    def digest(self, role: str) -> str:
        from damoc.models.load import checkpoint_digest

        path = self.path(role)
        return "default-minilm" if path is None else checkpoint_digest(path)

    def scorer_tokenizer(self):
        """(tokenizer, what it is) of the scorer LM, loading no weights (damoc.data.lm.load_scorer_tokenizer);
        ConfigError or DamocError when none can be resolved or read."""
        from damoc.data.lm import load_scorer_tokenizer

        reference = self._paths.get("scorer") or self.cfg.scorer_model      # resolved already: no second resolve
        return load_scorer_tokenizer(reference, self.cache_root, trust_remote_code=self.cfg.trust_remote_code)


# ------------------------------------------------------------------------------ filter context
class FilterContext:
    """What a filter method sees: the rows, the budget, cached scores and the scorer LM, and where
    it records its steps."""

    def __init__(self, records: list[dict], validation: list[dict], *, keep: int, seed: int, params: dict,
                 cfg: DataCompressionConfig, models: ScorerModels, engine, cache_root: Optional[Path],
                 rows_digest: str, seconds: dict):
        self.records, self.validation = records, validation
        self.n, self.keep, self.seed, self.params = len(records), keep, seed, params
        self.cfg, self.models, self.engine = cfg, models, engine
        self.cache_root, self.rows_digest = cache_root, rows_digest
        self.batch_size = cfg.batch_size
        self.steps: list[dict] = []
        self.notes: dict[str, Any] = {}
        self.seconds = seconds
        self._scores: dict[str, dict] = {}
        self._lm = None
        self._scratch: Optional[Path] = None

    def step(self, name: str, rows_in: int, rows_out: int, **extra) -> None:
        self.steps.append({"step": name, "rows_in": int(rows_in), "rows_out": int(rows_out), **extra})

    def note(self, **values) -> None:
        self.notes.update(values)

    def scorer_settings(self, name: str) -> tuple[dict, dict]:
        """(constructor kwargs, their fingerprint form) of a scorer."""
        from damoc.data.scorers import SCORER_MODEL_ROLE

        role = SCORER_MODEL_ROLE[name]
        settings: dict[str, Any] = {"model": self.models.path(role), "batch_size": self.batch_size}
        if role != "embedding":
            settings.update(trust_remote_code=self.cfg.trust_remote_code, max_length=self.cfg.max_length)
        key = {**settings, "model": self.models.digest(role), "batch_size": None}
        if name == "reward":
            settings["reward_model"] = self.params.get("reward_model")
            key["reward_model"] = _reward_digest(settings["reward_model"])
        return settings, key

    def scores(self, name: str) -> dict[str, np.ndarray]:
        """A scorer's outputs for every training row (cached on disk by fingerprint)."""
        if name in self._scores:
            return self._scores[name]
        from damoc.data.scorers import SCORERS

        settings, key = self.scorer_settings(name)
        with _timed(self.seconds, f"score:{name}"):
            out = self._disk_cached(f"score-{name}", key, lambda: self.engine.map(
                SCORERS[name], settings, self.records, desc=f"data: {name} scores"))
        self._scores[name] = out
        return out

    def tuned_scores(self, name: str, tune: dict, train: Callable[[Path], None], scorer_cls: type,
                     records: Sequence[dict], *, desc: str, **options) -> dict[str, np.ndarray]:
        """Per-row outputs of `scorer_cls` on the engine under a model fine-tuned once, in this
        process (LESS's warm-up, MoDS's seed model, Cherry's pre-experienced model).

        `train(directory)` fine-tunes the scorer LM and writes what the scorer class loads into
        `directory` (safetensors only). That checkpoint is cached by fingerprint (`tune`, the
        scorer's weights and settings, the seed, the batch size and the training rows) under
        CACHE/data-finetunes, written to a temporary directory and renamed into place, so a re-run
        does not retrain. The scorer gets `model` = the checkpoint directory plus `options`; its
        outputs are cached like `scores` (and when they are, nothing is trained or loaded). On a
        multi-node Ray cluster the cache directory must be shared storage, as the actors read the
        checkpoint from it."""
        settings, key = self.scorer_settings("ifd")          # the scorer LM's settings
        tuned = fp.fingerprint(FINETUNE_STAGE, name, tune, key, self.seed, self.batch_size, self.rows_digest)
        rows = fp.fingerprint("rows", [[r.get("id"), r["prompt"], r["response"]] for r in records])

        def score() -> dict:
            checkpoint = self._checkpoint(name, tuned, train)
            return self.engine.map(scorer_cls, {**settings, **options, "model": str(checkpoint)}, records, desc=desc)

        with _timed(self.seconds, f"score:{name}"):
            return self._disk_cached(f"tuned-{name}", {"tuned": tuned, "options": options, "rows": rows}, score)

    def _checkpoint(self, name: str, tuned: str, train: Callable[[Path], None]) -> Path:
        if self.cache_root is None and self._scratch is None:
            self._scratch = Path(tempfile.mkdtemp(prefix="damoc-finetunes-"))
            weakref.finalize(self, shutil.rmtree, self._scratch, True)
        entry = fp.stage_dir(self.cache_root or self._scratch, FINETUNE_STAGE, tuned)
        if fp.is_done(entry):
            log.info("data: %s fine-tune from the cache", name)
            return entry
        with _timed(self.seconds, f"finetune:{name}"), atomic_dir(entry) as tmp:
            train(tmp)
            fp.write_summary(tmp, {"finetune": name})
        return entry

    def scorer_lm(self):
        if self._lm is None:
            from damoc.data.lm import ScorerLM

            started = time.perf_counter()
            self._lm = ScorerLM.load(self.models.path("scorer"), trust_remote_code=self.cfg.trust_remote_code,
                                     max_length=self.cfg.max_length)
            self.seconds["load_scorer"] = round(time.perf_counter() - started, 3)
        return self._lm

    def _disk_cached(self, name: str, key: Any, compute: Callable[[], dict]) -> dict:
        if self.cache_root is None:
            return compute()
        entry = fp.stage_dir(self.cache_root, SCORES_STAGE, fp.fingerprint(SCORES_STAGE, name, key, self.rows_digest))
        if not fp.is_done(entry):
            out = compute()
            with atomic_dir(entry) as tmp:
                np.savez(tmp / "scores.npz", **{k: np.asarray(v) for k, v in out.items()})
                fp.write_summary(tmp, {"scorer": name, "rows": self.n})
            return out
        with np.load(entry / "scores.npz", allow_pickle=False) as saved:
            log.info("data: %s scores from the cache", name)
            return {k: saved[k] for k in saved.files}


# ------------------------------------------------------------------------------ the stage
@contextmanager
def _timed(seconds: dict, name: str):
    started = time.perf_counter()
    yield
    seconds[name] = round(seconds.get(name, 0.0) + time.perf_counter() - started, 3)


def check_rows(records: Sequence[dict], split: str = "train") -> None:
    for r in records:
        for field in ("prompt", "response"):
            if not isinstance(r.get(field), str) or not r[field].strip():
                raise DataError(f"{split} row {r.get('id')!r}: empty {field}; data compression needs text in both fields")


def budget(n: int, keep_ratio: float) -> int:
    from damoc.data.selectors import budget as selector_budget

    return selector_budget(n, keep_ratio) if n else 0


def row_budget(n: int, cfg: DataCompressionConfig) -> tuple[int, dict]:
    """Rows the filter keeps, and what stats should say about it: `filter.budget_rows` when set (a
    budget above the n training rows keeps all n, with a note), else round-half-up(n x keep_ratio);
    `none` keeps every row."""
    f = cfg.filter
    if f.method == "none":
        return n, {}
    if f.budget_rows is None:
        return budget(n, f.keep_ratio), {}
    if f.budget_rows > n:
        return n, {"budget_note": f"budget_rows {f.budget_rows} exceeds the {n} training rows: all {n} kept"}
    return f.budget_rows, {}


def _reward_digest(reward_model: Optional[str]) -> Optional[str]:
    from damoc.models.load import checkpoint_digest

    return checkpoint_digest(reward_model) if reward_model else None


def compress_data(data: LoadedData, cfg: DataCompressionConfig, seed: int = 0, *, cache_root: Optional[Path] = None,
                  engine=None, start_ray: Optional[Callable[[], bool]] = None,
                  on_cluster: bool = False) -> tuple[LoadedData, dict]:
    """Compress the training split. Returns the compressed data and the stage's stats (rows,
    tokens per field and per candidate tokenizer, filter steps, BERTScore gate and rewrites,
    seconds per sub-stage). `start_ray` starts Ray if an `auto` engine sends a map to Ray Data;
    `on_cluster` (the run names a Ray cluster) sends all of them there."""
    from damoc.data.engine import make_engine
    from damoc.fingerprint import default_cache_root

    started = time.perf_counter()
    seconds: dict[str, float] = {}
    cache_root = Path(cache_root) if cache_root is not None else default_cache_root()
    train = list(data.splits["train"])
    check_rows(train)
    method = cfg.filter.method
    params = method_params(method, cfg.filter.params)
    models = ScorerModels(cfg, cache_root)
    own_engine = engine is None
    engine = engine or make_engine(cfg.engine, batch_size=cfg.batch_size, actors=cfg.actors,
                                   cpus_per_actor=cfg.cpus_per_actor, gpus_per_actor=cfg.gpus_per_actor,
                                   start_ray=start_ray, on_cluster=on_cluster)
    keep, budget_info = row_budget(len(train), cfg)
    ctx = FilterContext(train, list(data.splits.get("validation", [])), keep=keep, seed=seed, params=params, cfg=cfg,
                        models=models, engine=engine, cache_root=cache_root,
                        rows_digest=fp.fingerprint("rows", [[r["id"], r["prompt"], r["response"]] for r in train]),
                        seconds=seconds)
    try:
        with _timed(seconds, "filter"):
            chosen = FILTERS[method].select(ctx) if keep < len(train) or method != "none" else np.arange(len(train))
            chosen = np.unique(np.asarray(chosen, dtype=np.int64))
        if not len(chosen):
            raise DataError(f"data_compression.filter '{method}' kept no training rows")
        kept = [train[i] for i in chosen]
        ctx.step(method, len(train), len(kept))
        tokens_info, compressed = _token_compression(ctx, kept, data.task_type, seconds)
        rewrite_info, compressed = _rewrite(ctx, kept, compressed, seconds)
    finally:
        if own_engine:
            engine.close()

    out = LoadedData(splits=dict(data.splits, train=compressed), task_type=data.task_type, format=data.format,
                     source=data.source, carved=data.carved, skipped=data.skipped, fingerprint=data.fingerprint)
    stats = {"filter": {"method": method, "keep_ratio": cfg.filter.keep_ratio, "budget_rows": cfg.filter.budget_rows,
                        "params": params, "budget": keep, **budget_info, "steps": ctx.steps, **ctx.notes},
             "rows_in": len(train), "rows_out": len(compressed), "engine": engine.name,
             "tokens": tokens_info, "rewrite": rewrite_info}
    stats.update(_token_totals(ctx, train, kept, compressed))
    seconds["total"] = round(time.perf_counter() - started, 3)
    stats["seconds"] = seconds
    return out, stats


def roles_needed(cfg: DataCompressionConfig) -> list[str]:
    """The scorer models a config uses (their weights are part of the stage's fingerprint)."""
    roles = set(NEEDS[cfg.filter.method])
    if cfg.tokens.enabled:
        roles.add("scorer")
        if cfg.rewrite.enabled:
            roles.add("rewrite")
    if "embedding" in roles and cfg.embedding_model is None:
        roles.discard("embedding")       # the bundled default encoder is pinned with the package
    return sorted(roles)


def check_scorer_models(cfg: DataCompressionConfig, cache_root: Path) -> None:
    """Before any work: the method's parameters are known and every language model the config
    uses is a causal LM (read from its config only)."""
    from damoc.data.lm import check_causal_lm

    method_params(cfg.filter.method, cfg.filter.params)
    models = ScorerModels(cfg, cache_root)
    keys = {"scorer": "data_compression.scorer_model",
            "instruct": "data_compression.instruct_model" if cfg.instruct_model else "data_compression.scorer_model",
            "rewrite": "data_compression.rewrite.model" if cfg.rewrite.model else "data_compression.instruct_model"}
    for role in roles_needed(cfg):
        if role != "embedding":
            check_causal_lm(models.path(role), trust_remote_code=cfg.trust_remote_code, key=keys[role])
    reward = cfg.filter.params.get("reward_model") if cfg.filter.method == "mods" else None
    if reward:
        _check_reward_model(reward, trust_remote_code=cfg.trust_remote_code)


def _check_reward_model(path: str, *, trust_remote_code: bool) -> None:
    """ConfigError unless `path` holds a sequence-classification model with one output (its config only)."""
    from transformers import AutoConfig

    from damoc.data.lm import read_pretrained
    from damoc.errors import ConfigError

    key = "data_compression.filter.params.reward_model"
    config = read_pretrained(AutoConfig, path, trust_remote_code=trust_remote_code, key=key)
    archs = list(getattr(config, "architectures", None) or [])
    if not any(a.endswith("ForSequenceClassification") for a in archs) or config.num_labels != 1:
        raise ConfigError(f"{key}: {path} is not a reward model (a sequence-classification checkpoint with one "
                          f"output; got {', '.join(archs) or config.model_type} with {config.num_labels} labels)")


def stage_fingerprint(cfg: DataCompressionConfig, data_fingerprint: str, seed: int, cache_root: Path) -> str:
    """What identifies a compressed dataset: the rows, the settings that change the result (not
    where scorers run), the scorer models' weights and the seed."""
    models = ScorerModels(cfg, cache_root)
    settings = cfg.model_dump(mode="json", exclude={"engine", "actors", "cpus_per_actor", "gpus_per_actor"})
    weights = {role: models.digest(role) for role in roles_needed(cfg)}
    if cfg.filter.params.get("reward_model"):
        weights["reward_model"] = _reward_digest(cfg.filter.params["reward_model"])
    return fp.fingerprint("data-compressed", data_fingerprint, settings, seed, weights, stage_version=3)


def _token_compression(ctx: FilterContext, kept: list[dict], task_type: str, seconds: dict) -> tuple[dict, list[dict]]:
    tokens = ctx.cfg.tokens
    if not tokens.enabled:
        return {"enabled": False}, kept
    from damoc.data.scorers import TokenCompressor

    settings, _ = ctx.scorer_settings("ifd")        # the scorer LM's settings
    settings.update(prompt_rate=tokens.rate("prompt"), response_rate=tokens.rate("response"),
                    force_keep=list(tokens.force_keep), response_score=tokens.response_score)
    with _timed(seconds, "tokens"):
        out = ctx.engine.map(TokenCompressor, settings, kept, desc="data: key-token compression")
    compressed = [json.loads(text) for text in out["record"]]
    infos = [json.loads(text) for text in out["info"]]
    fields = {}
    for name in ("prompt", "response"):
        t_in = sum(i[name]["tokens_in"] for i in infos)
        t_out = sum(i[name]["tokens_out"] for i in infos)
        target = sum(i[name]["target"] for i in infos)
        off = [abs(i[name]["tokens_out"] - i[name]["target"]) for i in infos]
        fields[name] = {"keep_ratio": tokens.rate(name), "tokens_in": t_in, "tokens_out": t_out, "target": target,
                        "realised_ratio": round(t_out / t_in, 4) if t_in else None,
                        "rows_within_one_token": sum(d <= 1 for d in off), "max_tokens_off": max(off, default=0)}
    info = {"enabled": True, "response_score": tokens.response_score, "force_keep": tokens.force_keep,
            "fields": fields, "over_budget_rows": sum(bool(i.get("over_budget")) for i in infos),
            "label_text_kept": task_type == "classification"}
    return info, compressed


def _rewrite(ctx: FilterContext, originals: list[dict], compressed: list[dict], seconds: dict) -> tuple[dict, list[dict]]:
    rewrite = ctx.cfg.rewrite
    if not rewrite.enabled:
        return {"enabled": False}, compressed
    if not ctx.cfg.tokens.enabled:
        return {"enabled": True, "note": "nothing to gate: token compression is off, so no text changed"}, compressed
    from damoc.data.rewrite import BertScoreGate, gate_and_rewrite, make_rewriter, summarize

    with _timed(seconds, "rewrite_load"):
        gate = BertScoreGate(rewrite.bertscore_model)
        rewriter = make_rewriter(rewrite.backend, ctx.models.path("rewrite"),
                                 trust_remote_code=ctx.cfg.trust_remote_code, seed=ctx.seed)
    out = [dict(r, meta=dict(r["meta"])) for r in compressed]
    info: dict[str, Any] = {"enabled": True, "threshold": rewrite.threshold, "max_rounds": rewrite.max_rounds,
                            "backend": rewrite.backend, "fields": {}}
    for name in ("prompt", "response"):
        rows = [i for i, (a, b) in enumerate(zip(originals, compressed)) if a[name] != b[name]]
        if not rows:
            continue
        with _timed(seconds, "rewrite"):
            texts, records = gate_and_rewrite([originals[i][name] for i in rows], [compressed[i][name] for i in rows],
                                              gate=gate, rewriter=rewriter, threshold=rewrite.threshold,
                                              max_rounds=rewrite.max_rounds, desc=f"data: {name}s")
        for i, text, record in zip(rows, texts, records):
            out[i][name] = text
            out[i]["meta"].setdefault("rewrite", {})[name] = record["outcome"]
        info["fields"][name] = summarize(records)
    return info, out


def _field_tokens(tokenizer, stages: dict[str, list[dict]]) -> dict:
    """Tokens per field (prompt, response) of each named row list, and the out/in ratio."""
    fields = {}
    for field in ("prompt", "response"):
        counts = {}
        for stage, rows in stages.items():
            texts = [r[field] for r in rows]
            counts[stage] = sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]) if texts else 0
        counts["ratio"] = round(counts["tokens_out"] / counts["tokens_in"], 4) if counts["tokens_in"] else None
        fields[field] = counts
    return {"tokens_in": sum(f["tokens_in"] for f in fields.values()),
            "tokens_out": sum(f["tokens_out"] for f in fields.values()), "fields": fields}


def _token_totals(ctx: FilterContext, train: list[dict], kept: list[dict], final: list[dict]) -> dict:
    """tokens_in/tokens_out (prompt + response of the training rows) in the scorer LM's tokenizer
    (data_compression.scorer_model, resolved as the scorers resolve it), whatever the method:
    embedding-only, `random` and `none` load just the tokenizer. `tokenizer_model` names it. Only
    when no scorer tokenizer can be resolved at all (no scorer_model and the default SmolLM2 not
    installed, or an unreadable one) are whitespace-separated words counted, `tokenizer` is
    "whitespace" and `tokenizer_note` says why."""
    stages = {"tokens_in": train, "tokens_after_filter": kept, "tokens_out": final}
    with _timed(ctx.seconds, "token_counts"):
        try:
            tokenizer, name = (ctx._lm.tokenizer, ctx._lm.name) if ctx._lm is not None else ctx.models.scorer_tokenizer()
        except DamocError as e:
            words = lambda rows: sum(len(r["prompt"].split()) + len(r["response"].split()) for r in rows)  # noqa: E731
            note = f"no scorer tokenizer ({str(e).strip().splitlines()[0]}); counted whitespace-separated words"
            log.warning("data: %s", note)
            return {"tokenizer": "whitespace", "tokenizer_model": None, "tokenizer_note": note,
                    "tokens_in": words(train), "tokens_out": words(final)}
        counts = _field_tokens(tokenizer, stages)
    return {"tokenizer": "scorer", "tokenizer_model": str(name), "tokens_in": counts["tokens_in"],
            "tokens_out": counts["tokens_out"], "token_fields": counts["fields"]}


def tokenizer_identity(tokenizer) -> str | None:
    """A digest of everything that decides a fast tokenizer's ids without special tokens (its
    normalizer, pre-tokenizer, model, added tokens: the Rust tokenizer's JSON), or None for a
    slow tokenizer, whose behaviour lives in Python code."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    return hashlib.sha256(f"{type(tokenizer).__name__}\n{backend.to_str()}".encode()).hexdigest()


def token_counts(train: list[dict], final: list[dict], candidate_tokenizers: dict[str, str]) -> dict:
    """Tokens before and after the stage, per field, in each candidate's own tokenizer (what its
    proxy fine-tuning actually reads). Candidates whose tokenizers are the same (a family's sizes,
    a zoo trained on one vocabulary) are counted once."""
    from transformers import AutoTokenizer

    out: dict[str, dict] = {}
    counted: dict[str, dict] = {}
    for name, path in candidate_tokenizers.items():
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        except (OSError, ValueError) as e:
            out[name] = {"error": str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}
            continue
        key = tokenizer_identity(tokenizer) or f"slow tokenizer of {name}"
        if key not in counted:
            counted[key] = _field_tokens(tokenizer, {"tokens_in": train, "tokens_out": final})
        out[name] = copy.deepcopy(counted[key])
    return out


# ------------------------------------------------------------------------------ output
def write_parquet(path: Path, records: Sequence[dict]) -> None:
    """Canonical records as Parquet (`meta` as a JSON string column: its keys vary by source)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({
        "id": pa.array([r["id"] for r in records], pa.string()),
        "prompt": pa.array([r["prompt"] for r in records], pa.string()),
        "response": pa.array([r["response"] for r in records], pa.string()),
        "choices": pa.array([r.get("choices") for r in records], pa.list_(pa.string())),
        "label": pa.array([r.get("label") for r in records], pa.int64()),
        "meta": pa.array([json.dumps(r.get("meta") or {}, ensure_ascii=False, sort_keys=True) for r in records], pa.string()),
    })
    pq.write_table(table, path)


def read_parquet(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    rows = pq.read_table(path).to_pylist()
    for r in rows:
        r["meta"] = json.loads(r["meta"]) if r.get("meta") else {}
    return rows


def format_stats(stats: dict) -> str:
    """The stage in a few lines: rows and tokens in/out, each filter step, token compression per
    field, the gate, and seconds per sub-stage."""
    f = stats["filter"]
    share = f"budget_rows {f['budget_rows']}" if f.get("budget_rows") is not None else f"keep_ratio {f['keep_ratio']}"
    lines = [f"filter {f['method']} ({share}): rows {stats['rows_in']} -> {stats['rows_out']}; "
             f"tokens ({stats.get('tokenizer')}) {stats.get('tokens_in')} -> {stats.get('tokens_out')}"]
    for note in (f.get("budget_note"), stats.get("tokenizer_note")):
        if note:
            lines.append(f"  note: {note}")
    for step in f.get("steps", [])[:-1]:
        lines.append(f"  {step['step']}: {step['rows_in']} -> {step['rows_out']}")
    tokens = stats.get("tokens") or {}
    for name, field in (tokens.get("fields") or {}).items():
        lines.append(f"tokens {name}: keep {field['keep_ratio']} -> {field['tokens_in']} -> {field['tokens_out']} "
                     f"(realised {field['realised_ratio']}; {field['rows_within_one_token']} rows within one token of the target)")
    for name, gate in ((stats.get("rewrite") or {}).get("fields") or {}).items():
        lines.append(f"gate {name}: {gate.get('passed', 0)} passed, {gate.get('accepted', 0)} rewritten, "
                     f"{gate.get('fallback', 0)} fell back to the original ({gate.get('rewrites_attempted', 0)} rewrites)")
    for name, counts in (stats.get("per_candidate") or {}).items():
        if "error" not in counts:
            lines.append(f"  {name}: {counts['tokens_in']} -> {counts['tokens_out']} tokens")
    seconds = stats.get("seconds") or {}
    lines.append("seconds: " + ", ".join(f"{k} {v:g}" for k, v in seconds.items()))
    return "\n".join(lines)

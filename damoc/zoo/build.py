"""`damoc zoo build`: tokenizer -> token streams -> candidates pretrained in parallel as Ray tasks
-> zero-shot scores on the bundled tasks -> DIR/<candidate>/ checkpoints and DIR/zoo.json.

Every step is cached by content fingerprint under the stage cache (`zoo-tokenizer`, `zoo-streams`,
`zoo-model`, `zoo-zeroshot`), so a rebuild after a crash or a change retrains only what changed, and
the zoo directory itself is assembled from the cache (hard links) in one atomic rename.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Optional

import numpy as np

from damoc import fingerprint as fp
from damoc.errors import DamocError
from damoc.io import atomic_dir, write_json
from damoc.log import progress
from damoc.zoo.pretraining_data import corpus_path, tokenize_corpus, train_tokenizer
from damoc.zoo.specs import ZOO_SIZES, CandidateSpec

log = logging.getLogger("damoc.zoo")
ZERO_SHOT_TASKS = ("wordnet-lexcat", "wordnet-defgen")
GENERATION_ROWS = 32          # rows generated for the zero-shot ROUGE-L of generation tasks
STAGE_VERSIONS = {"zoo-tokenizer": 1, "zoo-streams": 1, "zoo-model": 1, "zoo-zeroshot": 1}
# The same settings pretrained on two CPUs give different weights: torch dispatches its kernels to
# the widest instruction set it finds (AVX512, AVX2, ...) and MKL picks its own code path per CPU,
# and each rounds differently; a few hundred steps amplify that (benchmarks/README, rank fidelity).
# These pin both to their x86-64 baseline code paths, at about 2.3x the time. On one CPU that makes
# the bytes independent of the instruction sets offered (a test caps them). It does not make two
# kinds of CPU agree: the demo zoo built so on AMD EPYC and on Intel Xeon differs in every
# candidate's bytes, and in three candidates' losses (benchmarks/README, portable zoo).
# Read when a process first dispatches, so they are set on fresh Ray workers, never in-process.
PORTABLE_KERNEL_ENV = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE"}


def default_zoo_dir(size: str, cache_root: Optional[Path] = None) -> Path:
    return (cache_root or fp.default_cache_root()) / "zoo" / size


# ------------------------------------------------------------------------------ cached steps
def _tokenizer(cache: Path, settings: dict, names: list[str]) -> tuple[str, Path]:
    key = fp.fingerprint("zoo-tokenizer", {n: fp.file_digest(corpus_path(n)) for n in names},
                         {k: settings[k] for k in ("vocab_size", "tokenizer_chars", "max_positions")},
                         stage_version=STAGE_VERSIONS["zoo-tokenizer"])
    entry = fp.stage_dir(cache, "zoo-tokenizer", key)
    if not fp.is_done(entry):
        started = time.perf_counter()
        with atomic_dir(entry) as tmp:
            tokenizer = train_tokenizer(tmp, names, settings["vocab_size"], settings["tokenizer_chars"], settings["max_positions"])
            fp.write_summary(tmp, {"vocab_size": len(tokenizer), "corpora": names, "seconds": round(time.perf_counter() - started, 2)})
        log.info("zoo: trained a %d-token byte-level BPE in %.1f s", len(tokenizer), time.perf_counter() - started)
    return key, entry


def _streams(cache: Path, tokenizer_key: str, tokenizer_dir: Path, names: list[str]) -> dict[str, Path]:
    key = fp.fingerprint("zoo-streams", tokenizer_key, names, stage_version=STAGE_VERSIONS["zoo-streams"])
    entry = fp.stage_dir(cache, "zoo-streams", key)
    if not fp.is_done(entry):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        with atomic_dir(entry) as tmp:
            sizes = {}
            for name in progress(names, desc="tokenizing corpora", unit="corpus"):
                stream = tokenize_corpus(tokenizer, name)
                np.save(tmp / f"{name}.npy", stream, allow_pickle=False)
                sizes[name] = int(len(stream))
            fp.write_summary(tmp, {"tokens": sizes})
        log.info("zoo: tokenized corpora: %s", ", ".join(f"{n} {t / 1e6:.2f}M tokens" for n, t in sizes.items()))
    return {name: entry / f"{name}.npy" for name in names}


def _model_key(spec: CandidateSpec, tokenizer_key: str, settings: dict, portable_kernels: bool = False) -> str:
    # Portable builds are other bytes, so they are cached apart; the default's key is unchanged.
    return fp.fingerprint("zoo-model", spec.to_dict(), tokenizer_key,
                          {n: fp.file_digest(corpus_path(n)) for n in spec.corpus_mix}, settings["max_positions"],
                          *([{"kernels": PORTABLE_KERNEL_ENV}] if portable_kernels else []),
                          stage_version=STAGE_VERSIONS["zoo-model"])


def _zero_shot_key(model_key: str, task: str, rows: int) -> str:
    from damoc.tasks import DATA_DIR

    return fp.fingerprint("zoo-zeroshot", model_key, task, fp.path_digest(DATA_DIR / task), rows,
                          stage_version=STAGE_VERSIONS["zoo-zeroshot"])


# ------------------------------------------------------------------------------ per candidate
def zero_shot_scores(model_dir: str | os.PathLike, task: str, rows: int) -> dict:
    """Zero-shot score of a checkpoint on a bundled task's test split (plain transformers load)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from damoc.config.schema import DataConfig
    from damoc.data import load_data
    from damoc.trials.evaluate import generate_responses, response_loss, rouge_l, score_choices

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    data = load_data(DataConfig.model_validate({"source": f"bundled:{task}", "max_rows": {"test": rows}}))
    records = data.splits["test"]
    if data.task_type == "classification":
        return {"metric": "accuracy", **score_choices(model, tokenizer, records)}
    scores = response_loss(model, tokenizer, records)
    sample = records[:GENERATION_ROWS]
    predictions = generate_responses(model, tokenizer, sample, max_new_tokens=32)
    return {"metric": "rouge_l", "rouge_l": rouge_l(predictions, [r["response"] for r in sample]),
            "rouge_rows": len(sample), **scores}


def build_candidate(spec: CandidateSpec, tokenizer_dir: Path, stream_paths: dict[str, Path], model_entry: Path,
                    zero_shot: dict[str, tuple[Path, int]], max_positions: int, threads: int = 1,
                    portable_kernels: bool = False) -> dict:
    """Pretrain (unless cached) and score zero-shot (unless cached) one candidate. Runs in a Ray task."""
    import torch

    from damoc.zoo.pretrain import pretrain

    if portable_kernels:
        kernels = fp.arithmetic_platform()
        if kernels["cpu_capability"] != "DEFAULT" or kernels["mkl_cbwr"] != PORTABLE_KERNEL_ENV["MKL_CBWR"]:
            raise DamocError(f"zoo: {spec.name} was to be pretrained with portable kernels, but this process "
                             f"dispatches to {kernels['cpu_capability']} (MKL_CBWR={kernels['mkl_cbwr']})")
    torch.set_num_threads(threads)
    if not fp.is_done(model_entry):
        with atomic_dir(model_entry) as tmp:
            stats = pretrain(spec, tokenizer_dir, {n: stream_paths[n] for n in spec.corpus_mix}, tmp,
                             max_positions=max_positions, threads=threads)
            fp.write_summary(tmp, stats)
    for task, (entry, rows) in zero_shot.items():
        if not fp.is_done(entry):
            started = time.perf_counter()
            scores = zero_shot_scores(model_entry, task, rows)
            with atomic_dir(entry) as tmp:
                fp.write_summary(tmp, {**scores, "seconds": round(time.perf_counter() - started, 2)})
    return fp.read_summary(model_entry)


# ------------------------------------------------------------------------------ the zoo
def build_zoo(size: str, out: Optional[str | os.PathLike] = None, *, cache_root: Optional[str | os.PathLike] = None,
              workers: Optional[int] = None, portable_kernels: bool = False) -> Path:
    """Build (or assemble from cache) the zoo of `size`; returns its directory. With
    `portable_kernels`, pretrain with PORTABLE_KERNEL_ENV's pinned kernels."""
    if size not in ZOO_SIZES:
        raise DamocError(f"unknown zoo size '{size}' (sizes: {', '.join(ZOO_SIZES)})")
    settings = ZOO_SIZES[size]
    specs: tuple[CandidateSpec, ...] = settings["candidates"]
    cache = Path(cache_root) if cache_root else fp.default_cache_root()
    out_dir = Path(out) if out else default_zoo_dir(size, cache)
    _check_out_dir(out_dir)
    started = time.perf_counter()

    names = sorted({n for spec in specs for n in spec.corpus_mix})
    tokenizer_key, tokenizer_dir = _tokenizer(cache, settings, names)
    stream_paths = _streams(cache, tokenizer_key, tokenizer_dir, names)

    jobs = []
    for spec in specs:
        model_key = _model_key(spec, tokenizer_key, settings, portable_kernels)
        model_entry = fp.stage_dir(cache, "zoo-model", model_key)
        zero_shot = {task: (fp.stage_dir(cache, "zoo-zeroshot", _zero_shot_key(model_key, task, settings["zero_shot_rows"])),
                            settings["zero_shot_rows"]) for task in ZERO_SHOT_TASKS}
        jobs.append((spec, model_key, model_entry, zero_shot))
    pending = [j for j in jobs if not fp.is_done(j[2]) or not all(fp.is_done(e) for e, _ in j[3].values())]
    if pending:
        log.info("zoo: building %d of %d %s candidates (%d cached)", len(pending), len(jobs), size, len(jobs) - len(pending))
        _run_on_ray(pending, tokenizer_dir, stream_paths, settings["max_positions"], workers, portable_kernels)
    else:
        log.info("zoo: all %d %s candidates cached", len(jobs), size)

    manifest = {"size": size, "kernels": "portable" if portable_kernels else "native",
                "tokenizer": {"vocab_size": settings["vocab_size"], "fingerprint": tokenizer_key},
                "zero_shot_rows": settings["zero_shot_rows"], "candidates": []}
    with atomic_dir(out_dir) as tmp:
        for spec, model_key, model_entry, zero_shot in jobs:
            _link_tree(model_entry, tmp / spec.name, skip={"stage.json"})
            stats = fp.read_summary(model_entry)
            manifest["candidates"].append({
                "name": spec.name, "path": spec.name, "architecture": stats["architecture"],
                "model_type": spec.model_type, "params": stats["params"],
                "non_embedding_params": stats["non_embedding_params"], "layers": spec.layers,
                "hidden_size": spec.hidden_size, "corpus_mix": spec.corpus_mix,
                "pretraining_tokens": stats["pretraining_tokens"], "final_pretraining_loss": round(stats["final_loss"], 4),
                "zero_shot": {task: _rounded(fp.read_summary(entry)) for task, (entry, _) in zero_shot.items()},
                "notes": spec.notes, "fingerprint": model_key,
                # The settings fingerprint names what was asked for; the weights' digest tells
                # whether two builds produced the same model (they do on one machine; two builds
                # on different machines were not the same, and fine-tuning amplifies that).
                "weights_sha256": fp.file_digest(model_entry / "model.safetensors"),
                "built_on": stats.get("built_on"),   # absent from entries cached before it was recorded
            })
        manifest["seconds"] = round(time.perf_counter() - started, 1)
        write_json(tmp / "zoo.json", manifest)
    log.info("zoo: %s zoo ready in %s (%.0f s)", size, out_dir, time.perf_counter() - started)
    return out_dir


def _rounded(scores: dict) -> dict:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in scores.items() if k != "seconds"}


def _check_out_dir(out_dir: Path) -> None:
    """Never replace a directory that is not a zoo (the assembly renames over `out_dir`)."""
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and not (out_dir / "zoo.json").exists())):
        raise DamocError(f"refusing to write the zoo to {out_dir}: it exists and is not a damoc zoo (no zoo.json)")


def _link_tree(src: Path, dst: Path, skip: set[str]) -> None:
    dst.mkdir(parents=True)
    for item in src.iterdir():
        if item.name in skip:
            continue
        if item.is_dir():
            _link_tree(item, dst / item.name, skip=set())
            continue
        try:
            os.link(item, dst / item.name)
        except OSError:  # another filesystem: copy instead
            shutil.copy2(item, dst / item.name)


def _run_on_ray(jobs: list, tokenizer_dir: Path, stream_paths: dict[str, Path], max_positions: int,
                workers: Optional[int], portable_kernels: bool = False) -> None:
    """One Ray task per candidate, one CPU each; the driver only waits and shows progress. Portable
    builds run in workers started with PORTABLE_KERNEL_ENV (a runtime_env gets its own processes)."""
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(num_cpus=workers or os.cpu_count(), include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING, configure_logging=False)
    task = ray.remote(num_cpus=1, max_retries=1)(build_candidate)
    if portable_kernels:
        task = task.options(runtime_env={"env_vars": PORTABLE_KERNEL_ENV})
    refs = {task.remote(spec, tokenizer_dir, stream_paths, entry, zero_shot, max_positions,
                        portable_kernels=portable_kernels): spec.name
            for spec, _, entry, zero_shot in jobs}
    try:
        with progress(total=len(refs), desc="pretraining candidates", unit="model") as bar:
            waiting = list(refs)
            while waiting:
                done, waiting = ray.wait(waiting, num_returns=1)
                stats = ray.get(done[0])
                log.info("zoo: %s done (loss %.3f, %.0f s)", refs[done[0]], stats["final_loss"], stats["seconds"])
                bar.update(1)
    finally:
        if started_here:
            ray.shutdown()


def format_manifest(manifest: dict) -> str:
    """The zoo as a table: size, pretraining, and zero-shot scores."""
    rows = [f"{'candidate':<26}{'architecture':<22}{'params':>8}{'layers':>7}{'tokens':>9}{'loss':>7}"
            f"{'lexcat acc':>11}{'gold lp':>9}{'defgen loss':>12}{'rougeL':>8}"]
    for c in manifest["candidates"]:
        lex = c["zero_shot"].get("wordnet-lexcat", {})
        gen = c["zero_shot"].get("wordnet-defgen", {})
        rows.append(f"{c['name']:<26}{c['architecture']:<22}{c['params'] / 1e6:>7.2f}M{c['layers']:>7}"
                    f"{c['pretraining_tokens'] / 1e6:>8.2f}M{c['final_pretraining_loss']:>7.3f}"
                    f"{lex.get('accuracy', float('nan')):>11.3f}{lex.get('gold_logprob', float('nan')):>9.3f}"
                    f"{gen.get('eval_loss', float('nan')):>12.3f}{gen.get('rouge_l', float('nan')):>8.3f}")
    return "\n".join(rows)

"""Load a candidate: a Hugging Face hub id, a local checkpoint directory, or `zoo:<size>/<name>` (a
candidate of the offline zoo, built on first use). Weights load from safetensors only, and a
checkpoint's own Python code runs only when the candidate's config sets `trust_remote_code`."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Optional

from damoc.errors import DamocError

log = logging.getLogger("damoc.models")
ZOO_PREFIX = "zoo:"


class CandidateError(Exception):
    """A candidate that cannot be used (missing, unsupported, unsafe): the trial records it as
    failed with this message and the other candidates still rank."""


def parse_zoo_reference(model: str) -> Optional[tuple[str, str]]:
    """(size, name) of a `zoo:<size>/<name>` reference (checked against the zoo's specs), or None
    for anything else. Cheap: builds nothing."""
    if not model.startswith(ZOO_PREFIX):
        return None
    from damoc.zoo.specs import ZOO_SIZES

    size, _, name = model[len(ZOO_PREFIX):].partition("/")
    if not name:
        raise DamocError(f"candidate '{model}': a zoo reference is zoo:<size>/<name>, e.g. zoo:demo/qwen2-tiny-domain")
    if size not in ZOO_SIZES:
        raise DamocError(f"candidate '{model}': unknown zoo size '{size}' (sizes: {', '.join(ZOO_SIZES)})")
    names = [spec.name for spec in ZOO_SIZES[size]["candidates"]]
    if name not in names:
        raise DamocError(f"candidate '{model}': no candidate '{name}' in the {size} zoo (candidates: {', '.join(names)})")
    return size, name


def resolve_model_path(model: str, *, cache_root: Optional[Path] = None, build_missing_zoo: bool = True) -> str:
    """A local path or hub id for `model`; `zoo:<size>/<name>` resolves into the zoo directory
    (building the zoo on first use)."""
    ref = parse_zoo_reference(model)
    if ref is None:
        return model
    size, name = ref
    from damoc.zoo.build import build_zoo, default_zoo_dir

    zoo_dir = default_zoo_dir(size, cache_root)
    if not (zoo_dir / "zoo.json").is_file() and build_missing_zoo:
        log.info("models: the %s zoo is not built yet; building it (cached for later runs)", size)
        build_zoo(size, zoo_dir, cache_root=cache_root)
    return str(zoo_dir / name)


def load_candidate(path: str, *, revision: Optional[str] = None, trust_remote_code: bool = False,
                   dtype: Optional[str] = None):
    """(model, tokenizer) from a resolved path or hub id; CandidateError with the reason when it
    cannot load."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    model = path
    local = Path(path).is_dir()
    if not local and (path.startswith((".", "/", "~")) or os.sep in path and Path(path.split(os.sep)[0]).exists()):
        raise CandidateError(f"model path not found: {path}")
    kwargs = {"revision": revision, "trust_remote_code": trust_remote_code,
              "local_files_only": local or os.environ.get("HF_HUB_OFFLINE") == "1"}
    try:
        config = AutoConfig.from_pretrained(path, **kwargs)
    except ValueError as e:  # unknown model_type, or remote code refused
        raise CandidateError(f"unsupported model {model}: {_first_line(e)}") from e
    except OSError as e:     # missing files, offline hub id
        raise CandidateError(f"cannot load {model}: {_first_line(e)}") from e
    if local and not any(Path(path).glob("*.safetensors")):
        raise CandidateError(f"{model} has no .safetensors weights (damoc does not load pickled .bin checkpoints)")
    try:
        model_obj = AutoModelForCausalLM.from_pretrained(
            path, config=config, use_safetensors=True,
            dtype=getattr(torch, dtype) if dtype else torch.float32, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    except (OSError, ValueError, KeyError) as e:
        raise CandidateError(f"cannot load {model}: {_first_line(e)}") from e
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model_obj, tokenizer


# A local checkpoint's files that do not change what loading it gives, left out of its digest:
# damoc's own records (a zoo candidate's build record carries the build's timings, so a rebuild
# with the same weights would otherwise retrain every cached trial), documentation, and weights in
# pickle and other formats damoc never loads (safetensors only), which would only cost hashing.
DIGEST_SKIPPED_NAMES = frozenset({"stage.json", "damoc_zoo.json", "README.md"})
DIGEST_SKIPPED_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".ckpt", ".pkl", ".h5", ".msgpack", ".onnx", ".gguf",
                                     ".png", ".md"})


def checkpoint_digest(path: str) -> str:
    """What identifies a candidate in fingerprints: for a local checkpoint the content of every
    top-level file loading it can read (config, generation config, weights, every tokenizer file
    such as tokenizer.model or merges.txt, remote code); for a remote model its hub id."""
    from damoc.fingerprint import file_digest

    p = Path(path)
    if not p.is_dir():
        return f"hub:{path}"
    files = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith(".")
                   and f.name not in DIGEST_SKIPPED_NAMES and f.suffix not in DIGEST_SKIPPED_SUFFIXES)
    return json.dumps({f.name: file_digest(f) for f in files}, sort_keys=True)


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__

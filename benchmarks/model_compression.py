"""What does layer pruning (and merging the removed layers back in) do to each candidate?

For every demo-zoo candidate (and SmolLM2-135M-Instruct when the optional package is installed):
the original model, and at prune ratios 0.25 and 0.5 the pruned model without merging and with each
merge method, measured on held-out rows of a bundled task:

- held-out perplexity of the answer tokens and the task score (accuracy, gold-option
  log-probability) as they are (zero-shot), and after a short fine-tune with the demo's recipe
  (what a DaMoC proxy is), for the zoo;
- what one forward pass costs: FLOPs per token (2 x the parameters a token passes through: decoder
  layers and the output head) before and after, and the measured evaluation wall time.

    python benchmarks/model_compression.py [--task wordnet-lexcat] [--ratios 0.25,0.5] [--finetune-steps 100]

Writes benchmarks/results/model_compression.json (commit, machine, config, one row per model and
variant). Zoo candidates run in two processes with one thread each.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import git_commit, machine  # noqa: E402

MERGES = ("none", "linear", "ties", "dare", "dare_ties")


def forward_flops_per_token(model) -> int:
    """2 x parameters a token's forward pass multiplies by: decoder layers, final norm and the
    output head (counted even when tied to the input embedding, which is a lookup)."""
    from damoc.models.importance import decoder_layer_list

    _, _, layers = decoder_layer_list(model)
    head = model.get_output_embeddings().weight.numel()
    return 2 * (sum(p.numel() for p in layers.parameters()) + head)


def evaluate(model, tokenizer, rows, fmt) -> dict:
    from damoc.trials.evaluate import evaluate_records

    started = time.perf_counter()
    scores = evaluate_records(model, tokenizer, rows, "classification", fmt=fmt, generate=False)
    return {"eval_loss": scores["eval_loss"], "perplexity": math.exp(scores["eval_loss"]),
            "accuracy": scores["accuracy"], "gold_logprob": scores["gold_logprob"],
            "eval_s": round(time.perf_counter() - started, 2)}


def run_model(name: str, path: str, args: dict) -> list[dict]:
    import torch

    from damoc.config import DataConfig
    from damoc.config.schema import ModelCompressionConfig
    from damoc.data import load_data
    from damoc.models.compress import calibration_rows, compress_model
    from damoc.models.load import load_candidate
    from damoc.trials.finetune import finetune
    from damoc.trials.prompts import PromptFormat

    from damoc.log import configure

    configure(-1)  # no progress bars from parallel workers
    torch.set_num_threads(args["threads"])
    data = load_data(DataConfig.model_validate({"source": f"bundled:{args['task']}",
                                                "max_rows": {"test": args["eval_rows"]}}))
    train, test = data.splits["train"], data.splits["test"]
    calibration = calibration_rows(train, args["calibration_samples"], seed=0)
    variants = [("original", 0.0, "none")] + [(f"prune{r}-{m}", r, m) for r in args["ratios"] for m in args["merges"]]
    rows = []
    for variant, ratio, merge in variants:
        model, tokenizer = load_candidate(path)
        model.eval()
        fmt = PromptFormat(tokenizer)
        layers = model.config.num_hidden_layers
        flops = forward_flops_per_token(model)
        t = time.perf_counter()
        cfg = ModelCompressionConfig.model_validate({"prune_ratio": ratio, "merge": {
            "method": merge, "density": args["density"], "lambda": args["scale"]}})
        model, info = compress_model(model, cfg, calibration, tokenizer=tokenizer, fmt=fmt, max_length=128, name=name)
        row = {"model": name, "variant": variant, "prune_ratio": ratio, "merge": merge,
               "layers": layers, "layers_kept": info["layers_kept"], "removed": info["removed"],
               "params": info["params"], "params_kept": info["params_kept"],
               "forward_flops_per_token": forward_flops_per_token(model),
               "forward_flops_saved": round(1 - forward_flops_per_token(model) / flops, 4),
               "compress_s": round(time.perf_counter() - t, 2)}
        if ratio and not info["removed"]:
            continue
        row["zero_shot"] = evaluate(model, tokenizer, test, fmt)
        if args["finetune_steps"] and (ratio == 0 or merge in args["finetune_merges"]):
            t = time.perf_counter()
            model.train()
            finetune(model, tokenizer, train, learning_rate=args["learning_rate"], batch_size=16,
                     max_steps=args["finetune_steps"], max_seq_length=128, seed=0, fmt=fmt)
            model.eval()
            row["finetuned"] = evaluate(model, tokenizer, test, fmt)
            row["finetune_s"] = round(time.perf_counter() - t, 2)
        rows.append(row)
        print(f"{name:<22}{variant:<20}layers {row['layers_kept']:>2}/{layers:<3}"
              f"ppl {row['zero_shot']['perplexity']:9.3f}"
              + (f"  fine-tuned ppl {row['finetuned']['perplexity']:8.3f} acc {row['finetuned']['accuracy']:.3f}"
                 if "finetuned" in row else ""), flush=True)
    return rows


def markdown(result: dict) -> str:
    """The tables for benchmarks/README.md, from a results file."""
    rows = result["results"]
    ratios, merges = result["config"]["ratios"], result["config"]["finetune_merges"]
    by = {(r["model"], r["variant"]): r for r in rows}
    models = list(dict.fromkeys(r["model"] for r in rows))
    tuned = [m for m in models if "finetuned" in by[(m, "original")]]
    out: list[str] = []
    if tuned:
        out += _zoo_tables(result, tuned, by, ratios, merges)
    untuned = [m for m in models if m not in tuned]
    for m in untuned:
        out += ["", f"{m} (no fine-tuning; merge lambda {result['config']['scale']}): held-out answer perplexity "
                "and accuracy as is.", "",
                "| variant | layers kept | perplexity | accuracy | gold log-prob | FLOPs saved |", "|---|---|---|---|---|---|"]
        for r in rows:
            if r["model"] == m:
                z = r["zero_shot"]
                out.append(f"| {r['variant']} | {r['layers_kept']}/{r['layers']} | {z['perplexity']:.4g} | "
                           f"{z['accuracy']:.3f} | {z['gold_logprob']:.3f} | {r['forward_flops_saved']:.0%} |")
    return "\n".join(out)


def _zoo_tables(result: dict, tuned: list[str], by: dict, ratios: list, merges: list) -> list[str]:
    out = [f"Fine-tuned answer perplexity after {result['config']['finetune_steps']} steps "
           f"(lower is better; `-`: nothing removed); FLOPs saved per token at each ratio.", "",
           "| candidate | layers | original | " + " | ".join(f"{r}: {m}" for r in ratios for m in ["none"] + [x for x in merges if x != "none"])
           + " | FLOPs saved " + " / ".join(str(r) for r in ratios) + " |",
           "|---|---|---|" + "---|" * (len(ratios) * len(merges)) + "---|"]
    variants = [f"prune{r}-{m}" for r in ratios for m in ["none"] + [x for x in merges if x != "none"]]
    for m in tuned:
        cells = []
        for v in variants:
            row = by.get((m, v))
            cells.append(f"{row['finetuned']['perplexity']:.3f}" if row and "finetuned" in row else "-")
        saved = " / ".join(f"{by[(m, f'prune{r}-none')]['forward_flops_saved']:.0%}" if (m, f"prune{r}-none") in by else "-"
                           for r in ratios)
        out.append(f"| {m} | {by[(m, 'original')]['layers']} | {by[(m, 'original')]['finetuned']['perplexity']:.3f} | "
                   + " | ".join(cells) + f" | {saved} |")
    out += ["", "Summary over the zoo: geometric-mean ratio of perplexity to the original model's (zero-shot "
            "and fine-tuned), mean fine-tuned accuracy, and how often the merge beat plain pruning "
            "after fine-tuning.", "",
            "| variant | zero-shot ppl ratio | fine-tuned ppl ratio | fine-tuned accuracy | beats `none` |",
            "|---|---|---|---|---|"]
    acc = [by[(m, "original")]["finetuned"]["accuracy"] for m in tuned]
    out.append(f"| original | 1.000 | 1.000 | {sum(acc) / len(acc):.3f} | |")
    all_variants = [f"prune{r}-{m}" for r in ratios for m in result["config"]["merges"]]
    for v in all_variants:
        pairs = [(by[(m, "original")], by[(m, v)]) for m in tuned if (m, v) in by]
        if not pairs:
            continue
        zs = math.exp(sum(math.log(b["zero_shot"]["perplexity"] / a["zero_shot"]["perplexity"]) for a, b in pairs) / len(pairs))
        ft_pairs = [(a, b) for a, b in pairs if "finetuned" in b]
        if ft_pairs:
            ft = math.exp(sum(math.log(b["finetuned"]["perplexity"] / a["finetuned"]["perplexity"]) for a, b in ft_pairs) / len(ft_pairs))
            accuracy = sum(b["finetuned"]["accuracy"] for _, b in ft_pairs) / len(ft_pairs)
            base = v.rsplit("-", 1)[0] + "-none"
            wins = [by[(b["model"], base)]["finetuned"]["perplexity"] > b["finetuned"]["perplexity"]
                    for _, b in ft_pairs if (b["model"], base) in by]
            beats = "" if v.endswith("-none") else f"{sum(wins)}/{len(wins)}"
            out.append(f"| {v} | {zs:.3f} | {ft:.3f} | {accuracy:.3f} | {beats} |")
        else:
            out.append(f"| {v} | {zs:.3f} | - | - | |")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="wordnet-lexcat")
    parser.add_argument("--ratios", default="0.25,0.5")
    parser.add_argument("--merges", default=",".join(MERGES))
    parser.add_argument("--density", type=float, default=0.5)
    parser.add_argument("--scale", type=float, default=1.0, help="merge lambda")
    parser.add_argument("--calibration-samples", type=int, default=64)
    parser.add_argument("--eval-rows", type=int, default=200)
    parser.add_argument("--finetune-steps", type=int, default=60, help="fine-tune steps per zoo variant (0: none)")
    parser.add_argument("--finetune-merges", default="none,linear,ties,dare_ties",
                        help="variants (by merge method) that are also fine-tuned; the original always is")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--models", help="comma-separated zoo candidate names (default: all)")
    parser.add_argument("--no-smollm2", action="store_true")
    parser.add_argument("--no-zoo", action="store_true", help="only SmolLM2 (e.g. for a merge-lambda sweep)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "model_compression.json"))
    parser.add_argument("--table", action="store_true", help="print the Markdown tables of an existing --out file and exit")
    args = parser.parse_args()
    if args.table:
        print(markdown(json.loads(Path(args.out).read_text())))
        return

    from damoc.models.load import resolve_model_path
    from damoc.zoo.specs import DEMO

    settings = {"task": args.task, "ratios": [float(r) for r in args.ratios.split(",")],
                "merges": args.merges.split(","), "density": args.density, "scale": args.scale,
                "calibration_samples": args.calibration_samples, "eval_rows": args.eval_rows,
                "finetune_steps": args.finetune_steps,
                "finetune_merges": args.finetune_merges.split(","), "learning_rate": args.learning_rate, "threads": 1}
    names = [] if args.no_zoo else args.models.split(",") if args.models else [spec.name for spec in DEMO]
    paths = {n: resolve_model_path(f"zoo:demo/{n}") for n in names}
    started = time.perf_counter()
    rows: list[dict] = []
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        for result in pool.map(run_model, names, [paths[n] for n in names], [settings] * len(names)):
            rows += result
    smollm2 = None
    if not args.no_smollm2:
        try:
            from damoc.zoo.smollm2 import default_smollm2_dir, import_smollm2

            smollm2 = str(import_smollm2(default_smollm2_dir()))
        except Exception as e:  # noqa: BLE001 - optional package; recorded, not fatal
            print(f"SmolLM2 skipped: {e}")
    if smollm2:
        rows += run_model("smollm2-135m-instruct", smollm2, {**settings, "finetune_steps": 0, "threads": 2})
    result = {"commit": git_commit(), "machine": machine(), "config": settings,
              "wall_s": round(time.perf_counter() - started, 1), "results": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    print(markdown(result))


if __name__ == "__main__":
    main()

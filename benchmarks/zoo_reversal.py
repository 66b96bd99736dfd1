"""Does the zoo show the paper's phenomenon? Fully fine-tune every zoo candidate on each bundled
task (the ground truth that damoc's proxies must predict) and compare with the zero-shot ranking.

    python benchmarks/zoo_reversal.py [--size demo] [--tasks wordnet-lexcat] [--seeds 0,1]

Writes benchmarks/results/zoo_reversal.json (commit, machine, config, per-candidate scores,
rankings and zero-shot-vs-fine-tuned agreement). Candidates run as Ray tasks, one CPU each.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import git_commit, machine  # noqa: E402

# Ranking metric per task type: (zero-shot score, fine-tuned score, higher is better?).
# Zero-shot accuracy on the zoo sits at chance for every candidate, so the zero-shot ranking of a
# classification task uses the gold option's normalised log-probability, which still separates them.
METRICS = {"classification": ("gold_logprob", "accuracy", True), "generation": ("eval_loss", "eval_loss", False)}


def run_one(model_dir: str, task: str, seed: int, lr: float, epochs: float, eval_rows: int, train_rows: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from damoc.config.schema import DataConfig
    from damoc.data import load_data
    from damoc.trials.evaluate import response_loss, score_choices
    from damoc.trials.finetune import finetune

    torch.set_num_threads(1)
    limits = {"test": eval_rows, **({"train": train_rows} if train_rows else {})}
    data = load_data(DataConfig.model_validate({"source": f"bundled:{task}", "max_rows": limits}))
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    stats = finetune(model, tokenizer, data.splits["train"], learning_rate=lr, epochs=epochs, batch_size=16,
                     max_seq_length=128, seed=seed)
    test = data.splits["test"]
    scores = score_choices(model, tokenizer, test) if data.task_type == "classification" else response_loss(model, tokenizer, test)
    return {"task_type": data.task_type, **scores, **stats}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="demo", choices=["micro", "demo"])
    parser.add_argument("--zoo", help="zoo directory (default: build or reuse the cached one)")
    parser.add_argument("--tasks", default="wordnet-lexcat")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--eval-rows", type=int, default=400)
    parser.add_argument("--train-rows", type=int, default=0, help="cap on training rows (0: all)")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "zoo_reversal.json"))
    args = parser.parse_args()

    import ray

    from damoc.io import write_json
    from damoc.log import configure
    from damoc.ranking.agreement import agreement, rank
    from damoc.zoo.build import build_zoo

    configure(0)
    started = time.perf_counter()
    zoo = Path(args.zoo) if args.zoo else build_zoo(args.size, workers=args.workers)
    manifest = json.loads((zoo / "zoo.json").read_text())
    tasks = args.tasks.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]

    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False, configure_logging=False)
    task_fn = ray.remote(num_cpus=1)(run_one)
    jobs = {(task, c["name"], seed): task_fn.remote(str(zoo / c["path"]), task, seed, args.lr, args.epochs,
                                                       args.eval_rows, args.train_rows)
            for task in tasks for c in manifest["candidates"] for seed in seeds}
    runs = {}
    for key, ref in jobs.items():
        runs[key] = ray.get(ref)
        print(f"{key[0]:<16}{key[1]:<24} seed {key[2]}: " + ", ".join(
            f"{k} {v:.4f}" for k, v in runs[key].items() if k in ("accuracy", "gold_logprob", "eval_loss")), flush=True)
    ray.shutdown()

    results = []
    for task in tasks:
        task_type = next(r["task_type"] for (t, _, _), r in runs.items() if t == task)
        zs_metric, ft_metric, higher = METRICS[task_type]
        zs_higher = zs_metric != "eval_loss"
        per_candidate = {}
        for c in manifest["candidates"]:
            values = [runs[(task, c["name"], s)][ft_metric] for s in seeds]
            per_candidate[c["name"]] = {
                "zero_shot": c["zero_shot"][task],
                "fine_tuned": {ft_metric: statistics.mean(values), "per_seed": values,
                               "spread": max(values) - min(values)},
                "params": c["params"], "layers": c["layers"],
                "train_seconds": statistics.mean(runs[(task, c["name"], s)]["seconds"] for s in seeds),
            }
        zero_shot = {n: v["zero_shot"][zs_metric] for n, v in per_candidate.items()}
        fine_tuned = {n: v["fine_tuned"][ft_metric] for n, v in per_candidate.items()}
        size = {n: float(v["params"]) for n, v in per_candidate.items()}
        seed_rankings = [rank({n: runs[(task, n, s)][ft_metric] for n in per_candidate}, higher) for s in seeds]
        results.append({
            "task": task, "zero_shot_metric": zs_metric, "fine_tuned_metric": ft_metric,
            "candidates": per_candidate,
            "ranking_fine_tuned": rank(fine_tuned, higher),
            "ranking_zero_shot": rank(zero_shot, zs_higher),
            "ranking_size": rank(size, True),
            "zero_shot_vs_fine_tuned": agreement(zero_shot, fine_tuned, predicted_higher_is_better=zs_higher,
                                                 truth_higher_is_better=higher),
            "size_vs_fine_tuned": agreement(size, fine_tuned, truth_higher_is_better=higher),
            "seed_agreement": (agreement({n: runs[(task, n, seeds[0])][ft_metric] for n in per_candidate},
                                         {n: runs[(task, n, seeds[1])][ft_metric] for n in per_candidate},
                                         predicted_higher_is_better=higher, truth_higher_is_better=higher)
                               if len(seeds) > 1 else None),
            "seed_rankings": seed_rankings,
        })
    out = {"commit": git_commit(), "machine": machine(), "zoo": str(zoo), "zoo_size": manifest["size"],
           "config": {"lr": args.lr, "epochs": args.epochs, "batch_size": 16, "max_seq_length": 128,
                      "method": "full fine-tuning", "seeds": seeds, "eval_rows": args.eval_rows,
                      "train_rows": args.train_rows or "all"},
           "seconds": round(time.perf_counter() - started, 1), "results": results}
    write_json(args.out, out)
    for r in results:
        print(f"\n{r['task']}: fine-tuned {r['ranking_fine_tuned']}\n  zero-shot {r['ranking_zero_shot']}\n"
              f"  zero-shot vs fine-tuned: {r['zero_shot_vs_fine_tuned']}\n  size vs fine-tuned: {r['size_vs_fine_tuned']}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Ready-to-run configs for fully fine-tuning the winner in the tools users already trust:
LLaMA-Factory (`llamafactory-cli train llamafactory.yaml`) and axolotl (`axolotl train
axolotl.yaml`), with the task's full training data exported in alpaca format for both."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from damoc.config import RunConfig
from damoc.data import LoadedData
from damoc.io import write_json, write_text
from damoc.trials.trial import resolve_deepspeed

DATASET_NAME = "damoc_task"


def _alpaca(record: dict) -> dict:
    row = {"instruction": record["prompt"], "input": "", "output": record["response"]}
    if record["meta"].get("system"):
        row["system"] = record["meta"]["system"]
    return row


def _deepspeed_file(spec: str, out: Path) -> str:
    if spec in ("zero2", "zero-2", "zero_2"):
        config = {"train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto",
                  "gradient_accumulation_steps": "auto", "gradient_clipping": "auto",
                  "zero_optimization": {"stage": 2, "overlap_comm": False, "contiguous_gradients": True},
                  "bf16": {"enabled": "auto"}}
        write_json(out / "ds_zero2.json", config)
        return str((out / "ds_zero2.json").resolve())
    return str(Path(spec).resolve())


def write_winner_configs(out: Path, report: dict, *, config: RunConfig, data: LoadedData, path: str) -> dict:
    name = report["winner"]
    candidate = next(c for c in config.candidates if c.display_name == name)
    training = config.training_for(candidate)
    out = Path(out)
    data_dir = out / "data"
    train_file = data_dir / "train.json"
    write_text(train_file, json.dumps([_alpaca(r) for r in data.splits["train"]], ensure_ascii=False, indent=0))
    write_text(data_dir / "validation.jsonl", "".join(json.dumps(_alpaca(r), ensure_ascii=False) + "\n" for r in data.splits["validation"]))
    columns = {"prompt": "instruction", "query": "input", "response": "output", "system": "system"}
    write_json(data_dir / "dataset_info.json", {DATASET_NAME: {"file_name": "train.json", "formatting": "alpaca", "columns": columns}})
    model = str(Path(path).resolve()) if Path(path).exists() else path
    lora = training.method == "lora"
    spec = resolve_deepspeed(training.deepspeed, method=training.method, workers=config.cluster.workers_per_candidate,
                             gpus_per_worker=config.cluster.gpus_per_worker)
    deepspeed = _deepspeed_file(spec, out) if spec else None

    llamafactory = {
        "model_name_or_path": model,
        "trust_remote_code": candidate.trust_remote_code,
        "stage": "sft", "do_train": True,
        "finetuning_type": "lora" if lora else "full",
        **({"lora_rank": training.lora.r, "lora_alpha": training.lora.alpha, "lora_dropout": training.lora.dropout,
            "lora_target": "all" if training.lora.target_modules == "all-linear" else ",".join(training.lora.target_modules)}
           if lora else {}),
        **({"deepspeed": deepspeed} if deepspeed else {}),
        "dataset": DATASET_NAME, "dataset_dir": str(data_dir.resolve()),
        "template": "default", "cutoff_len": training.max_seq_length, "packing": training.packing,
        "train_on_prompt": training.loss_on == "all",
        "output_dir": f"saves/{name}/{'lora' if lora else 'full'}/sft",
        "per_device_train_batch_size": training.batch_size,
        "gradient_accumulation_steps": training.gradient_accumulation_steps,
        "learning_rate": training.learning_rate, "num_train_epochs": training.epochs,
        "lr_scheduler_type": training.lr_scheduler_type, "warmup_ratio": training.warmup_ratio, "weight_decay": training.weight_decay,
        "bf16": training.bf16 is True, "seed": training.seed, "logging_steps": 10, "save_steps": 500,
        "overwrite_output_dir": True,
    }
    axolotl = {
        "base_model": model,
        "trust_remote_code": candidate.trust_remote_code,
        "datasets": [{"path": str(train_file.resolve()), "ds_type": "json", "type": "alpaca"}],
        "test_datasets": [{"path": str((data_dir / "validation.jsonl").resolve()), "ds_type": "json", "type": "alpaca", "split": "train"}],
        "sequence_len": training.max_seq_length, "sample_packing": training.packing,
        "train_on_inputs": training.loss_on == "all",
        **({"adapter": "lora", "lora_r": training.lora.r, "lora_alpha": training.lora.alpha,
            "lora_dropout": training.lora.dropout,
            **({"lora_target_linear": True} if training.lora.target_modules == "all-linear"
               else {"lora_target_modules": list(training.lora.target_modules)})} if lora else {}),
        **({"deepspeed": deepspeed} if deepspeed else {}),
        "micro_batch_size": training.batch_size, "gradient_accumulation_steps": training.gradient_accumulation_steps,
        "num_epochs": training.epochs, "learning_rate": training.learning_rate, "optimizer": "adamw_torch",
        "lr_scheduler": training.lr_scheduler_type, "warmup_ratio": training.warmup_ratio, "weight_decay": training.weight_decay,
        "bf16": "auto" if training.bf16 == "auto" else training.bf16, "seed": training.seed,
        "output_dir": f"./outputs/{name}",
    }
    header = f"# Fine-tune {name}, damoc's pick for {config.data.source}, on the full training data.\n"
    write_text(out / "llamafactory.yaml", header + "# Run: llamafactory-cli train llamafactory.yaml\n" + yaml.safe_dump(llamafactory, sort_keys=False))
    write_text(out / "axolotl.yaml", header + "# Run: axolotl train axolotl.yaml\n" + yaml.safe_dump(axolotl, sort_keys=False))
    return {"llamafactory": str(out / "llamafactory.yaml"), "axolotl": str(out / "axolotl.yaml"),
            "dataset": str(train_file)}

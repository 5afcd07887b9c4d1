"""Train a small Qwen2.5-VL quality scorer from scratch with the training wing's recipe, on a CPU.

Stages (each timed): distill (the ``measured`` teacher: no large model needed) → tokenizer (trained on the
distilled reasoning, the prompts and the dataset's English captions) → a fresh Qwen2.5-VL → SFT (full, vision
tower trained) → eval → GRPO (format + accuracy + consistency) → export → eval. Trains only on ``split == train``
and reports on ``split == val``; the SFT-only metrics are kept beside the final ones.

    .venv/bin/python examples/train_nano.py --data ../shared/data/agiqa-3k/labels.csv --out runs/nano
    .venv/bin/python examples/train_nano.py ... --smoke      # a few images and steps: checks the whole path

Every stage reuses the library (``qponder_plugin.training``); this script only wires them and sizes the model.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from contextlib import contextmanager
from pathlib import Path

from qponder_plugin import load_scorer
from qponder_plugin.profiles import QPONDER
from qponder_plugin.testing import CHAT_TEMPLATE, build_config, build_processor, build_tokenizer
from qponder_plugin.training.data import read_mos, to_dataset
from qponder_plugin.training.describer import MeasuredTeacher
from qponder_plugin.training.distill import distill, read_distilled
from qponder_plugin.training.evaluate import evaluate
from qponder_plugin.training.export import export
from qponder_plugin.training.trainers import run_grpo, run_sft

SIZES = {"nano": dict(hidden=256, layers=4, vision_depth=4, side=448, vocab=4096),
         "smoke": dict(hidden=128, layers=2, vision_depth=2, side=112, vocab=800)}


@contextmanager
def stage(name: str, timings: dict):
    started = time.perf_counter()
    print(f"[{name}] ...", flush=True)
    yield
    timings[name] = round(time.perf_counter() - started, 1)
    print(f"[{name}] {timings[name]} s", flush=True)


def init_model(corpus: list[str], out: Path, size: dict, seed: int) -> Path:
    """A fresh, randomly initialised Qwen2.5-VL with a tokenizer trained on ``corpus``."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(seed)
    processor = build_processor(build_tokenizer(corpus, vocab_size=size["vocab"]), side=size["side"])
    processor.chat_template = CHAT_TEMPLATE
    model = Qwen2_5_VLForConditionalGeneration(build_config(processor.tokenizer, size["hidden"], size["layers"],
                                                            size["vision_depth"]))
    model.generation_config.eos_token_id = processor.tokenizer.eos_token_id
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    model.save_pretrained(out)
    processor.save_pretrained(out)
    (out / "qponder.json").write_text(json.dumps({"profile": QPONDER.name}))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="AGIQA-3K labels.csv (with a split column)")
    parser.add_argument("--out", type=Path, default=Path("runs/nano"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sft-epochs", type=float, default=3.0)
    parser.add_argument("--grpo-steps", type=int, default=200)
    parser.add_argument("--side", type=int, help="image side in pixels the model sees (default: per size)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--smoke", action="store_true", help="16 train / 8 val images, tiny model, a few steps")
    args = parser.parse_args()
    size = dict(SIZES["smoke" if args.smoke else "nano"])
    size["side"] = args.side or size["side"]
    out, timings = args.out, {}
    out.mkdir(parents=True, exist_ok=True)
    train, val = read_mos(args.data, split="train"), read_mos(args.data, split="val")
    train_records, val_records = list(train), list(val)
    if args.smoke:
        rng = random.Random(args.seed)
        train_records, val_records = rng.sample(train_records, 16), rng.sample(val_records, 8)

    with stage("distill", timings):
        stats = distill(MeasuredTeacher(), train_records, out / "distill.jsonl", tolerance=0.01,
                        max_pixels=size["side"] ** 2)
        print(vars(stats))
    rows = read_distilled(out / "distill.jsonl")
    with stage("tokenizer+init", timings):
        corpus = [r["completion"] for r in rows] + [QPONDER.think_prompt, QPONDER.nothink_prompt]
        corpus += sorted({getattr(r, "group", "") for r in train_records})  # the captions: generic English
        init = init_model(corpus, out / "init", size, args.seed)
    with stage("sft", timings):
        records = [r for r in train_records if str(r.image) in {row["image"] for row in rows}]
        by_image = {row["image"]: row["completion"] for row in rows}
        dataset = to_dataset(records, with_completion=[by_image[str(r.image)] for r in records])
        sft_args = {"num_train_epochs": args.sft_epochs, "learning_rate": 1e-3,
                    "per_device_train_batch_size": args.batch_size,
                    "lr_scheduler_type": "cosine", "warmup_steps": 0.05, "logging_steps": 10}
        if args.smoke:
            sft_args.update(max_steps=2, logging_steps=1)
        sft = run_sft(init, dataset, out / "sft", lora=False, freeze_vision=False, args=sft_args)
    reports = {}
    with stage("eval-sft", timings), load_scorer(sft, max_new_tokens=160) as scorer:
        reports["sft"] = evaluate(scorer, val_records, out / "eval", name="sft")["metrics"]
    with stage("grpo", timings):
        grpo_args = {"max_steps": 1 if args.smoke else args.grpo_steps, "learning_rate": 2e-5,
                     "max_completion_length": 160, "logging_steps": 1 if args.smoke else 10}
        grpo = run_grpo(sft, to_dataset(train_records), out / "grpo", rewards=["format", "accuracy", "consistency"],
                        reward_weights=[0.5, 1.0, 0.5], lora=False, freeze_vision=False, args=grpo_args)
    with stage("eval-grpo", timings), load_scorer(grpo, max_new_tokens=160) as scorer:
        reports["grpo"] = evaluate(scorer, val_records, out / "eval", name="grpo")["metrics"]
    with stage("export", timings):
        card = {"name": "qponder-nano", "data": f"{args.data} (train split, {len(train_records)} images)",
                "settings": {"size": size, "sft": sft_args, "grpo": grpo_args, "seed": args.seed},
                "metrics": {"val after SFT": reports["sft"], "val after GRPO": reports["grpo"]}}
        export(grpo, out / "export", card=card, overwrite=True)
    summary = {"timings_s": timings, "val": reports}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(json.dumps(summary, indent=2, default=str))


if __name__ == "__main__":
    main()

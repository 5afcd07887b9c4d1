"""How far a model's reasoning is grounded in the image: its attribute statements against measurements.

For each checkpoint, every image of the split is scored with reasoning, and each aspect the ``measured`` teacher
describes (sharpness, noise, exposure, contrast, colour, artifacts) is read back from the reasoning in the teacher's
wordings (``describer.stated``) and compared with the teacher's own finding for that image at the checkpoint's input
size (``describer.findings``). A model that states each aspect's most common finding on every image scores the
"constant" line, so agreement above it is what the reasoning takes from the image. "balanced" is the mean recall over
the findings the teacher makes (``sklearn.metrics.balanced_accuracy_score``), for which stating one finding
everywhere scores 1/k with k findings, however common that finding is; "varied" counts the images on which a model's
statement differs from its own most common one.

    .venv/bin/python benchmarks/grounding.py nano runs/nano/sft
"""

from __future__ import annotations

import argparse
import warnings
from collections import Counter
from pathlib import Path


def read_back(model: str, paths: list[str]) -> tuple[list[dict], list[dict]]:
    """What the model states per image, and what the teacher finds at the model's input size."""
    from qponder_plugin.training.describer import findings, measure, stated

    from qponder_plugin import load_scorer
    from qponder_plugin.images import load_image

    with load_scorer(model, batch_size=8) as scorer:
        results = scorer.assess_batch(paths)
    said = [stated(r.reasoning or "") for r in results]
    found = [findings(measure(load_image(p, max_pixels=scorer.max_pixels))) for p in paths]
    return said, found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="model aliases or checkpoint folders")
    parser.add_argument("--data", type=Path, required=True, help="AGIQA-3K labels.csv with a split column")
    parser.add_argument("--split", default="val")
    args = parser.parse_args()
    from qponder_plugin.training.data import read_mos
    from sklearn.metrics import balanced_accuracy_score

    paths = [str(r.image) for r in read_mos(args.data, split=args.split)]
    print(f"attribute statements that agree with the measured teacher, on {len(paths)} {args.split} images")
    for model in args.models:
        said, found = read_back(model, paths)
        total = {"agree": 0, "constant": 0, "balanced": 0.0, "constant balanced": 0.0}
        print(f"\n{model}\n{'aspect':10s} {'agree':>6s} {'constant':>9s} {'balanced':>9s} {'constant':>9s} "
              f"{'varied':>7s} {'unstated':>9s}")
        for aspect in found[0]:
            truth = [f[aspect] for f in found]
            statements = [tuple(s[aspect]) for s in said]
            agree = sum(s == (t,) for s, t in zip(statements, truth))
            constant = Counter(truth).most_common(1)[0][1]
            varied = len(statements) - Counter(statements).most_common(1)[0][1]
            with warnings.catch_warnings():  # a finding stated but never made by the teacher is a plain miss here
                warnings.simplefilter("ignore", UserWarning)
                balanced = balanced_accuracy_score(truth, [s[0] if len(s) == 1 else -1 for s in statements])
            chance = 1 / len(set(truth))
            for key, value in zip(total, (agree, constant, balanced, chance)):
                total[key] += value
            print(f"{aspect:10s} {agree:6d} {constant:9d} {balanced:9.3f} {chance:9.3f} {varied:7d} "
                  f"{statements.count(()):9d}")
        aspects = len(found[0])
        print(f"{'all':10s} {total['agree']:6d} {total['constant']:9d} {total['balanced'] / aspects:9.3f} "
              f"{total['constant balanced'] / aspects:9.3f}   (counts of {len(paths) * aspects}; balanced: mean)")


if __name__ == "__main__":
    main()

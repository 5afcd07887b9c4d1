"""How far a model's reasoning is grounded in the image: its attribute statements against measurements.

For each checkpoint, every image of each set is scored with reasoning, and each aspect the ``measured`` teacher
describes (sharpness, noise, exposure, contrast, colour, artifacts) is read back from the reasoning in the teacher's
wordings (``describer.stated``) and compared with the teacher's own finding for that image at the checkpoint's input
size (``describer.findings``). A model that states each aspect's most common finding on every image scores the
"constant" line, so agreement above it is what the reasoning takes from the image. "balanced" is the mean recall over
the findings the teacher makes (``sklearn.metrics.balanced_accuracy_score``), for which stating one finding
everywhere scores 1/k with k findings, however common that finding is; "varied" counts the images on which a model's
statement differs from its own most common one.

Before the models, the teacher's own findings are tabled per set, and per subset for BIQ2021's photos (``ss01`` the
author's camera photos, ``ss02`` photos spoiled on purpose, ``ss03`` Unsplash): the share of images with each
finding and their mean MOS, so that findings which never vary, or do not follow quality, show.

    .venv/bin/python benchmarks/grounding.py nano runs/nano/sft --data ../shared/data/agiqa-3k/labels.csv \
        --split val --data "BIQ2021/Test (Images and MOS).csv" --split test
"""

from __future__ import annotations

import argparse
import re
import warnings
from collections import Counter, defaultdict
from pathlib import Path

from provenance import weights_header


def teacher_findings(paths: list[str], max_pixels: int) -> list[dict]:
    """The teacher's finding per aspect for each image, measured at ``max_pixels`` (the model's input size)."""
    from qponder_plugin.training.describer import findings, measure

    from qponder_plugin.images import load_image

    return [findings(measure(load_image(p, max_pixels=max_pixels))) for p in paths]


def read_back(model: str, paths: list[str]) -> tuple[list[dict], list[dict]]:
    """What the model states per image, and what the teacher finds at the model's input size."""
    from qponder_plugin.training.describer import stated

    from qponder_plugin import load_scorer

    with load_scorer(model, batch_size=8) as scorer:
        results = scorer.assess_batch(paths)
    return [stated(r.reasoning or "") for r in results], teacher_findings(paths, scorer.max_pixels)


def subset(label: str, image: str) -> str:
    """The set's label, with BIQ2021's subset (from the file name) for its photos."""
    found = re.match(r"(ss0\d) \(", Path(image).name) if label.startswith("biq2021") else None
    return f"{label} {found.group(1)}" if found else label


def table_findings(sets: dict, max_pixels: int) -> None:
    """Per set and subset: the share of images with each finding, and their mean MOS."""
    from qponder_plugin.training.describer import FINDINGS

    print(f"the measured teacher's findings at {max_pixels} pixels: share of images (mean MOS)")
    for aspect, rules in FINDINGS.items():
        print(f"  {aspect}: " + " | ".join(f"{i}: {variants[0][:48]}" for i, (_, variants) in enumerate(rules)))
    for label, records in sets.items():
        groups = defaultdict(list)
        for record, found in zip(records, teacher_findings([str(r.image) for r in records], max_pixels)):
            groups[subset(label, str(record.image))].append((record.mos, found))
        for group, rows in sorted(groups.items()):
            print(f"\n{group}: {len(rows)} images, mean MOS {sum(m for m, _ in rows) / len(rows):.2f}")
            for aspect, rules in FINDINGS.items():
                cells = []
                for index in range(len(rules)):
                    moses = [m for m, found in rows if found[aspect] == index]
                    cells.append(f"{len(moses) / len(rows):.2f} ({sum(moses) / len(moses):.2f})" if moses else "0.00")
                print(f"  {aspect:10s} " + "  ".join(f"{i}: {cell:13s}" for i, cell in enumerate(cells)))


def table_grounding(model: str, label: str, paths: list[str]) -> None:
    from sklearn.metrics import balanced_accuracy_score

    said, found = read_back(model, paths)
    total = {"agree": 0, "constant": 0, "balanced": 0.0, "constant balanced": 0.0}
    print(f"\n{model} on {label} ({len(paths)} images)\n{'aspect':10s} {'agree':>6s} {'constant':>9s} "
          f"{'balanced':>9s} {'constant':>9s} {'varied':>7s} {'unstated':>9s}")
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", help="model aliases or checkpoint folders (none: the teacher's table)")
    parser.add_argument("--data", type=Path, action="append", required=True,
                        help="a label file; repeat it for several sets")
    parser.add_argument("--split", action="append", default=[],
                        help="the split to keep: one for all --data files, or one for each")
    parser.add_argument("--max-pixels", type=int, default=252 * 252,
                        help="the input size at which the teacher's table measures (the nano model's)")
    args = parser.parse_args()
    print(weights_header(*args.models), flush=True)  # none: the teacher's table only
    from qponder_plugin.training.cli import read_sets

    sets = read_sets(tuple(map(str, args.data)), None, None, tuple(args.split), None)
    table_findings(sets, args.max_pixels)
    for model in args.models:
        for label, records in sets.items():
            table_grounding(model, label, [str(r.image) for r in records])


if __name__ == "__main__":
    main()

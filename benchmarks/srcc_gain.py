"""Whether one model's val SRCC gain over another is more than noise: a paired bootstrap over the images.

Reads two reports written by ``qponder eval`` (or the recipe's eval stage; ``<name>.json`` with per-image
``rows``), keeps the images both scored, and prints each SRCC, the difference and its 95% percentile interval from
resampling images with replacement (the same images for both models). Images of one prompt are correlated; with
``--labels`` (the label file the reports were scored from) whole groups (prompts) are resampled instead, which
respects that correlation. ``--only`` keeps the images whose path contains a text, such as one BIQ2021 subset.

    .venv/bin/python benchmarks/srcc_gain.py runs/nano/eval/sft.json runs/nano/eval/grpo.json \
        [--labels ../shared/data/agiqa-3k/labels.csv] [--only ss03]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from qponder_plugin.training.data import read_mos
from scipy import stats


def scored(report: Path) -> dict[str, tuple[float, float]]:
    """Image label -> (MOS, score) for the report's rows with status ok."""
    rows = json.loads(report.read_text())["rows"]
    return {r["image"]: (r["mos"], r["score"]) for r in rows if r["status"] == "ok" and r["score"] is not None}


def srcc_gain(mos, before, after) -> float:
    return stats.spearmanr(mos, after)[0] - stats.spearmanr(mos, before)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path, help="the baseline's report JSON")
    parser.add_argument("after", type=Path, help="the candidate's report JSON")
    parser.add_argument("--labels", type=Path, help="label file with groups: resample groups, not images")
    parser.add_argument("--only", help="keep only the images whose path contains this text (e.g. ss03)")
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    before, after = scored(args.before), scored(args.after)
    images = sorted(i for i in before.keys() & after.keys() if args.only is None or args.only in i)
    mos = np.array([before[i][0] for i in images])
    a, b = (np.array([scores[i][1] for i in images]) for scores in (before, after))
    options = dict(vectorized=False, n_resamples=args.resamples, method="percentile", random_state=args.seed)
    if args.labels:
        group_of = {record.image: record.group for record in read_mos(args.labels, check_images=False)}
        unlabelled = [image for image in images if image not in group_of]
        if unlabelled:
            raise SystemExit(f"{len(unlabelled)} scored images are not in {args.labels}, e.g. {unlabelled[0]}")
        members = defaultdict(list)
        for index, image in enumerate(images):
            members[group_of[image]].append(index)
        groups = [np.array(indices) for indices in members.values()]

        def gain_of_groups(picked) -> float:
            rows = np.concatenate([groups[int(g)] for g in picked])
            return srcc_gain(mos[rows], a[rows], b[rows])

        interval = stats.bootstrap((np.arange(len(groups)),), gain_of_groups, **options).confidence_interval
        unit = f"{len(groups)} groups"
    else:
        interval = stats.bootstrap((mos, a, b), srcc_gain, paired=True, **options).confidence_interval
        unit = "images"
    print(f"{len(images)} images scored by both; resampling {unit}")
    srcc_a, srcc_b = stats.spearmanr(mos, a)[0], stats.spearmanr(mos, b)[0]
    print(f"SRCC {srcc_a:.4f} -> {srcc_b:.4f}: gain {srcc_b - srcc_a:+.4f}, "
          f"95% interval [{interval.low:+.4f}, {interval.high:+.4f}]")


if __name__ == "__main__":
    main()

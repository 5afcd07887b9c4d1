"""Whether one model's val SRCC gain over another is more than noise: a paired bootstrap over the images.

Reads two reports written by ``qponder eval`` (or the recipe's eval stage; ``<name>.json`` with per-image
``rows``), keeps the images both scored, and prints each SRCC, the difference and its 95% percentile interval from
resampling images with replacement (the same images for both models). Images of one prompt are correlated, so the
interval is, if anything, too narrow.

    .venv/bin/python benchmarks/srcc_gain.py runs/nano/eval/sft.json runs/nano/eval/grpo.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
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
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    before, after = scored(args.before), scored(args.after)
    images = sorted(before.keys() & after.keys())
    mos = np.array([before[i][0] for i in images])
    a, b = (np.array([scores[i][1] for i in images]) for scores in (before, after))
    interval = stats.bootstrap((mos, a, b), srcc_gain, paired=True, vectorized=False, n_resamples=args.resamples,
                               method="percentile", random_state=args.seed).confidence_interval
    print(f"{len(images)} images scored by both")
    print(f"SRCC {stats.spearmanr(mos, a)[0]:.4f} -> {stats.spearmanr(mos, b)[0]:.4f}: "
          f"gain {srcc_gain(mos, a, b):+.4f}, 95% interval [{interval.low:+.4f}, {interval.high:+.4f}]")


if __name__ == "__main__":
    main()

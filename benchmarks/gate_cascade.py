"""The gate's cascade against always reasoning: agreement of verdicts, measured cost, and a projection for 7B.

Scores every image once in each mode (per-image costs of each stage), then runs the real cascade gate and prints,
side by side for a few margins: how often its verdicts agree with always-think verdicts, the share of images it
re-scores with reasoning, its measured cost against the bound ``no-think cost + share × think cost``, and the
speed-up over always reasoning projected for a 7B checkpoint from per-stage costs of ``--reasoning-tokens`` tokens.

Projection assumption (stated, not measured here): decoding is memory-bound, so each generated token costs one
"decode step"; a no-think score is a prefill plus 3 tokens, a reasoned score a prefill plus the reasoning; a
prefill of an image prompt costs ``--prefill-steps`` decode steps (default 10, typical of a 7B model on a GPU
with ~1,300 prompt tokens). Then think/no-think cost = (P + R) / (P + 3).

    .venv/bin/python benchmarks/gate_cascade.py --data ../shared/data/agiqa-3k/labels.csv --split val --model nano
    .venv/bin/python benchmarks/gate_cascade.py --images 48      # synthetic images, the smoke model
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
from provenance import weights_header
from smoke_model import MODEL_HELP, model_or_smoke, solid_image

from qponder_plugin import QualityGate, load_scorer

MARGINS = (0.0, 0.1, 0.25, 0.5)


def images(args) -> list:
    if args.data is None:
        return [solid_image(b, 128, seed=2000 + i) for i, b in enumerate(np.linspace(0, 1, args.images))]
    from qponder_plugin.training.data import read_mos

    records = list(read_mos(args.data, split=args.split))
    if args.limit:  # an evenly spaced sample: the label files are sorted by generator
        records = records[::max(1, len(records) // args.limit)][:args.limit]
    return [str(r.image) for r in records]


def timed(function, *args, **kwargs):
    started = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help=MODEL_HELP)
    parser.add_argument("--data", type=Path, help="a MOS label file (e.g. AGIQA-3K labels.csv)")
    parser.add_argument("--split", help="the label file's split (e.g. val)")
    parser.add_argument("--limit", type=int, help="score an evenly spaced sample of N images of the split")
    parser.add_argument("--images", type=int, default=48, help="synthetic images (without --data)")
    parser.add_argument("--threshold", type=float, help="default: the median always-think score")
    parser.add_argument("--reasoning-tokens", type=int, default=300)
    parser.add_argument("--prefill-steps", type=float, default=10.0)
    args = parser.parse_args()
    args.model = model_or_smoke(args.model)
    print(weights_header(args.model), flush=True)
    inputs = images(args)
    with load_scorer(args.model, batch_size=8) as scorer:
        scorer.assess_batch(inputs[:2], think=False)  # warm up
        fast, fast_s = timed(scorer.assess_batch, inputs, think=False)
        think, think_s = timed(scorer.assess_batch, inputs, think=True)
        scores = [t.score for t in think if t.ok]
        threshold = args.threshold or statistics.median(scores)
        always = [t.ok and t.score >= threshold for t in think]
        tokens = statistics.mean(len(t.raw or "") for t in think if t.ok)
        print(f"{len(inputs)} images, model {scorer.model_id}; threshold {threshold:.3f}; parsed: no-think "
              f"{sum(f.ok for f in fast)}, think {len(scores)}; mean reasoning length {tokens:.0f} characters")
        print(f"per image: no-think {1000 * fast_s / len(inputs):.1f} ms, think {1000 * think_s / len(inputs):.1f} ms "
              f"(ratio {think_s / fast_s:.1f}x)")
        ratio_7b = (args.prefill_steps + args.reasoning_tokens) / (args.prefill_steps + 3)
        print(f"7B projection: think costs {ratio_7b:.1f}x no-think ({args.reasoning_tokens} reasoning tokens, "
              f"prefill = {args.prefill_steps:g} decode steps)")
        print(f"{'margin':>6} {'agree':>7} {'re-scored':>9} {'cascade s':>9} {'bound s':>8} {'think s':>8} "
              f"{'speed-up':>8} {'7B speed-up':>11}")
        for margin in MARGINS:
            gate = QualityGate(threshold, scorer=scorer, margin=margin)
            verdicts, cascade_s = timed(lambda g=gate: [v for _, v in g.verdicts(inputs)])
            agree = statistics.mean(v.passed == a for v, a in zip(verdicts, always))
            share = gate.calls["think"] / len(inputs)
            bound = fast_s + share * think_s
            projected = ratio_7b / (1 + share * ratio_7b)
            print(f"{margin:>6.2f} {agree:>7.1%} {share:>9.1%} {cascade_s:>9.1f} {bound:>8.1f} {think_s:>8.1f} "
                  f"{think_s / cascade_s:>7.1f}x {projected:>10.1f}x")


if __name__ == "__main__":
    main()

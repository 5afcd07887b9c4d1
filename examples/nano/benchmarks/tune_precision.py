"""Vision fine-tune step time in float32 against bfloat16 autocast, side by side in one run.

Each round runs ``tune_vision`` for a fixed number of steps from the bundled nano model on the train MOS, once in
float32 and once with ``bf16=True``, alternating which goes first so that machine noise hits both alike. It prints
the seconds per step of each (a whole run's wall time over its steps, so loading the model and images and saving the
result are included, which understates the ratio), their ratio, and each run's mean loss over its last steps (bf16
must learn as well as float32, not just faster). On a CPU without AMX or AVX512-BF16, bfloat16 matrix products are
emulated and the ratio can fall below 1.

    .venv/bin/python examples/nano/benchmarks/tune_precision.py                  # 12 steps of 32 crops, 3 rounds
    .venv/bin/python examples/nano/benchmarks/tune_precision.py --steps 40 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

RECIPE = Path(__file__).resolve().parents[1]  # examples/nano: the recipe's modules are plain modules there
sys.path.insert(0, str(RECIPE))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="AGIQA-3K labels.csv (train images are used)")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    from qponder_plugin.training.data import read_mos
    from vision_tune import tune_vision

    from qponder_plugin.spec import NANO

    records = list(read_mos(args.data, split="train"))[:args.steps * args.batch_size]
    images, scores = [str(r.image) for r in records], [r.mos for r in records]
    times, losses = {"float32": [], "bf16": []}, {"float32": [], "bf16": []}
    with tempfile.TemporaryDirectory() as scratch:
        for round_ in range(args.rounds):
            order = ["float32", "bf16"] if round_ % 2 == 0 else ["bf16", "float32"]
            for name in order:
                start = time.perf_counter()
                out = tune_vision(NANO, images, scores, Path(scratch) / name, epochs=1, batch_size=args.batch_size,
                                  learning_rate=2e-5, fresh_learning_rate=3e-4, bf16=name == "bf16", log_every=0)
                times[name].append((time.perf_counter() - start) / args.steps)
                log = json.loads((out / "tune_log.json").read_text())
                losses[name].append(statistics.mean(entry["loss"] for entry in log[-4:]))
    for name in times:
        print(f"{name:8s} {statistics.median(times[name]):6.2f} s/step (loading and saving included)  "
              f"loss over the last 4 steps {statistics.mean(losses[name]):.4f}")
    print(f"float32 / bf16 step time: {statistics.median(times['float32']) / statistics.median(times['bf16']):.2f}x")


if __name__ == "__main__":
    main()

"""How fast nano 2's vision tower and the whole model run on this CPU, per image, at batch 8.

For each Qwen3-VL checkpoint (``nano2.py``'s), on real images (AGIQA-3K ``val`` and the photos' test rows, spread
evenly) at the checkpoint's processor size: the tower alone, cut after each of ``--blocks`` blocks (the processor's
work left out; the best of ``--repeats`` passes), and with ``--reasoning``, the whole model through the library
(``load_scorer``, batch 8, with reasoning, at most ``--max-new-tokens`` new tokens, image loading included, after one
warm-up batch). An untrained language model seldom stops before the token budget, so its time is an upper bound
for a trained one that reasons within the budget.

    .venv/bin/python examples/nano/benchmarks/tower_speed.py runs/nano2/t12-448 --reasoning \
        --data ../shared/data/agiqa-3k/labels.csv --photos "../BIQ2021/Test (Images and MOS).csv"
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def tower_ms(checkpoint: Path, paths: list[str], blocks: list[int], repeats: int, batch_size: int = 8) -> dict:
    """Milliseconds per image of the checkpoint's tower cut after each of ``blocks`` blocks."""
    import torch
    from qponder_plugin.training.trainers import load_policy, vision_tower

    from qponder_plugin.default_plugins.transformers_backend import pixel_budget
    from qponder_plugin.images import load_image

    model, processor = load_policy(checkpoint)
    tower = vision_tower(model).eval()
    budget = pixel_budget(processor.image_processor)
    batches = [processor.image_processor(images=[load_image(p, max_pixels=budget) for p in paths[i:i + batch_size]],
                                         return_tensors="pt") for i in range(0, len(paths), batch_size)]
    every, times = tower.blocks, {}
    with torch.inference_mode():
        for depth in blocks:
            tower.blocks = every[:depth]
            passes = []
            for _ in range(repeats):
                started = time.perf_counter()
                for inputs in batches:
                    tower(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"])
                passes.append(time.perf_counter() - started)
            times[depth] = 1000 * min(passes) / len(paths)
    tower.blocks = every
    return times


def model_seconds(checkpoint: Path, paths: list[str], max_new_tokens: int) -> tuple[float, float]:
    """Seconds per image of the whole model with reasoning at batch 8 (after a warm-up batch), and the mean number
    of characters it wrote."""
    from qponder_plugin import load_scorer

    with load_scorer(checkpoint, batch_size=8, max_new_tokens=max_new_tokens) as scorer:
        scorer.assess_batch(paths[:8])
        started = time.perf_counter()
        results = scorer.assess_batch(paths)
        seconds = (time.perf_counter() - started) / len(paths)
    return seconds, sum(len(r.raw or "") for r in results) / len(results)


def main() -> None:
    from qponder_plugin.training.data import read_mos

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", type=Path, help="Qwen3-VL checkpoint folders")
    parser.add_argument("--data", type=Path, required=True, help="AGIQA-3K labels.csv with a split column")
    parser.add_argument("--photos", type=Path, nargs="*", default=[], help="photo label files, MOS on 0-1")
    parser.add_argument("--images", type=int, default=16, help="images per set")
    parser.add_argument("--blocks", type=int, nargs="+", default=[4, 8, 12])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reasoning", action="store_true", help="time the whole model with reasoning too")
    parser.add_argument("--max-new-tokens", type=int, default=160, help="the recipe's evals allow 160")
    args = parser.parse_args()

    sets = [[str(r.image) for r in read_mos(args.data, split="val")]]
    if args.photos:
        sets.append([str(r.image) for path in args.photos for r in read_mos(path, score_range=(0.0, 1.0))
                     if r.split != "train"])
    paths = [path for paths in sets for path in paths[::max(1, len(paths) // args.images)][:args.images]]
    print(f"{len(paths)} images, batch 8; tower alone in ms/image by blocks"
          + (f"; whole model with reasoning (at most {args.max_new_tokens} new tokens) in s/image" if args.reasoning
             else ""))
    for checkpoint in args.checkpoints:
        cells = [f"{depth} blocks {ms:6.1f}" for depth, ms in tower_ms(checkpoint, paths, args.blocks,
                                                                      args.repeats).items()]
        if args.reasoning:
            seconds, written = model_seconds(checkpoint, paths, args.max_new_tokens)
            cells.append(f"model {seconds:.3f} s ({written:.0f} characters written)")
        print(f"{str(checkpoint):36s} " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()

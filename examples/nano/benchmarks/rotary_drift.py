"""How far each checkpoint's vision tower moves when its rotary positions are switched on, side by side.

For each checkpoint, the tower's output tokens on AGIQA-3K ``val`` images (every fifth, 70 in all) are computed twice:
with the rotary embedding as configured, and with every rotary angle at zero. The drift is the relative distance
between the two, ``||on - off|| / ||off||``. A tower transplanted from DINOv2 (no rotary positions of its own) should
drift little: ``vision_transplant`` re-bases its heads for that.

    .venv/bin/python examples/nano/benchmarks/rotary_drift.py runs/nano/transplant runs/nano/tune
"""

from __future__ import annotations

import argparse
from pathlib import Path


def drift(checkpoint: Path, paths: list[str]) -> float:
    import torch
    from qponder_plugin.training.trainers import load_policy, vision_tower

    from qponder_plugin.default_plugins.transformers_backend import pixel_budget
    from qponder_plugin.images import load_image

    model, processor = load_policy(checkpoint)
    tower = vision_tower(model).eval()
    budget = pixel_budget(processor.image_processor)
    inputs = processor.image_processor(images=[load_image(p, max_pixels=budget) for p in paths], return_tensors="pt")
    with torch.inference_mode():
        on = tower(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"]).last_hidden_state
        tower.rotary_pos_emb.inv_freq.zero_()
        off = tower(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"]).last_hidden_state
    return ((on - off).norm() / off.norm()).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", type=Path, help="Qwen2.5-VL checkpoint folders")
    parser.add_argument("--data", type=Path, required=True, help="AGIQA-3K labels.csv with a split column")
    args = parser.parse_args()
    from qponder_plugin.training.data import read_mos

    paths = [str(r.image) for r in read_mos(args.data, split="val")][::5]
    print(f"vision tower drift from its rotary-free output, on {len(paths)} val images")
    for checkpoint in args.checkpoints:
        print(f"{str(checkpoint):40s} {drift(checkpoint, paths):8.4f}")


if __name__ == "__main__":
    main()

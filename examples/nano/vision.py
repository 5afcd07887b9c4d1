"""Vision warm-up: feature distillation of a fresh vision tower from a frozen pretrained encoder.

A small Qwen2.5-VL trained from scratch on a few thousand MOS-labelled images sees too few pictures to learn good
visual features from the score alone. Before SFT, its vision tower (plus a temporary linear head on the mean of its
output tokens) learns to regress a frozen teacher encoder's pooled features of the same random crops. Only the
vision tower is updated and saved; the head and the teacher are thrown away, so the teacher is never a runtime
dependency of the model.

``teacher`` is any callable taking a float tensor ``[B, 3, H, W]`` in 0..1 and returning features ``[B, D]``
(e.g. an ImageNet CNN's pooled features, normalisation included). Targets are standardised per image (layer norm),
so the loss does not depend on the teacher's feature scale.

Given ``scores`` (the images' MOS), a second temporary head also regresses the standardised MOS from the same pooled
tokens, so the tower keeps the teacher's features and learns which of them carry quality: the vision fine-tune.
Without a teacher, the MOS alone is fitted: a pretrained (transplanted) tower's end-to-end fine-tune, its
blocks at a low learning rate and its fresh merger at a higher one (``fresh_learning_rate``), on crops that keep
the scale of the image's detail (``crop="native"``).

With ``dense_weight > 0`` and a teacher that also returns its feature maps (``maps=True`` in
``vision_teachers``), each of the tower's output tokens also regresses the teacher's maps pooled to the tokens'
grid, through a third temporary head: many targets per crop instead of one, which a tower trained on a few thousand
images learns much more from.

With ``attribute_weight > 0``, a fourth temporary head also regresses what the ``measured`` teacher finds in
each image as the model sees it (sharpness, noise, exposure, contrast, colourfulness, blockiness; standardised), so
the tower's tokens carry the attributes the reasoning is asked to state, not only what predicts the MOS.

With ``distort > 0``, that share of the crops also gets one synthetic distortion (blur, noise, JPEG, exposure or
contrast) before both the teacher and the tower see it: more pictures to match the teacher on, and pictures whose
quality differs in the ways quality assessment must notice.

A large teacher (a ViT) can cost more per step than the student. With ``views=K``, K crops per image are drawn once
and the teacher runs on each of them once, up front; every step then picks one of an image's K crops. The crops and
their features can be kept in a ``cache`` file, so a later stage (the fine-tune) reuses them.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Sequence
from pathlib import Path

from qponder_plugin.images import ImageError, load_image

log = logging.getLogger(__name__)


def warm_up_vision(checkpoint: str | Path, images: Sequence[str], teacher: Callable | None, output_dir: str | Path,
                   *, scores: Sequence[float] | None = None, score_weight: float = 1.0, epochs: int = 10,
                   batch_size: int = 32, learning_rate: float = 1e-3, fresh_learning_rate: float | None = None,
                   crop: str = "resized", crop_scale: float = 0.5, views: int = 0,
                   cache: str | Path | None = None, dense_weight: float = 0.0, attribute_weight: float = 0.0,
                   distort: float = 0.0, bf16: bool = False, seed: int = 0, log_every: int = 10) -> Path:
    """Distil ``teacher`` into the vision tower of ``checkpoint``; write the whole model to ``output_dir``.

    Each step takes ``batch_size`` images, cuts a random crop (``crop_scale``..1 of the area) resized to the processor's
    input size, flips half of them, and fits the student's pooled tokens to the teacher's features of that same crop,
    plus ``score_weight`` times the MSE of the standardised MOS when ``scores`` are given (one per image). With
    ``teacher=None`` only the MOS term is fitted: the vision fine-tune end to end. ``fresh_learning_rate`` (default:
    ``learning_rate``) is the rate of the merger and the temporary heads, which start from scratch, while the tower's
    blocks keep ``learning_rate``: a transplanted tower's pretrained blocks take a low rate that would leave a fresh
    merger almost untrained. ``crop="native"`` resizes each image to the input side, as the model will see it, and cuts
    a random crop one token row smaller (``native_crop``), so blur, noise and artefacts keep the scale of the
    whole-image view: the right crop for a MOS target. With ``views > 0``, each crop is one of ``views`` fixed crops per
    image whose teacher features are computed once (see ``fixed_views``). With ``dense_weight``, ``dense_weight`` times
    the MSE of every output token against the teacher's maps at its place is added (fresh crops only). With
    ``attribute_weight``, that weight times the MSE of the image's standardised ``describer.attributes`` (measured at
    the input size) is added. With ``distort``, that share of the fresh crops is distorted (``distortions``) before
    teacher and tower see it. With ``bf16``, the teacher's and the tower's forward passes run under bfloat16 autocast
    (faster on CPUs with AMX and on recent GPUs; the weights, the optimiser and the patch embedding stay float32).
    Unreadable images are skipped with a warning. Runs on CUDA when available (the teacher stays where it is; its
    features are moved). Returns ``output_dir``; the per-step losses (total, feature, MOS, dense, attribute) go to
    ``warmup_log.json``.
    """
    import torch
    import torch.nn.functional as F
    from torchvision.transforms import v2

    from qponder_plugin.backends.hf import pixel_budget

    from qponder_plugin.training.describer import attributes, measure
    from qponder_plugin.training.trainers import load_policy, save_with_card, tower_parts, vision_tower

    if scores is not None and len(scores) != len(images):
        raise ValueError(f"vision warm-up: {len(scores)} scores for {len(images)} images")
    if teacher is None and (scores is None or views or dense_weight or distort):
        raise ValueError("vision warm-up: without a teacher it needs scores, and no views, dense_weight or distort")
    if crop not in ("resized", "native"):
        raise ValueError(f"vision warm-up: crop is 'resized' or 'native', not {crop!r}")
    torch.manual_seed(seed)
    rng = random.Random(seed)
    output_dir = Path(output_dir)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, processor = load_policy(checkpoint, freeze_vision=False)
    dtype = model.dtype
    tower = vision_tower(model).to(device=device, dtype=torch.float32).train()
    embed = getattr(tower, "patch_embed", None) if bf16 else None
    if embed is not None:  # a bfloat16 patch embedding (a convolution) trains several times slower on CPU
        embed.forward = _without_autocast(embed.forward, device)
    side = round(pixel_budget(processor.image_processor) ** 0.5)
    pictures, kept = [], []
    for index, path in enumerate(images):
        try:
            pictures.append(load_image(path, max_pixels=(2 * side) ** 2))
            kept.append(index)
        except ImageError as exc:
            log.warning("vision warm-up skips an image: %s", exc)
    if not pictures:
        raise ValueError("vision warm-up: none of the images could be read")
    cell = model.config.vision_config.patch_size * model.config.vision_config.spatial_merge_size  # one output token
    cropping = ([v2.RandomResizedCrop((side, side), scale=(crop_scale, 1.0), antialias=True)] if crop == "resized"
                else [v2.Resize((side, side), antialias=True), v2.RandomCrop(native_crop(side, cell))])
    augment = v2.Compose(cropping + [v2.RandomHorizontalFlip()]
                         + ([v2.PILToTensor(), distortions(distort)] if distort else []))
    maps_probe, heads = None, []
    if teacher is not None:  # a head from the pooled tokens to the teacher's features
        with torch.no_grad():
            pooled_probe, maps_probe = _split(teacher(torch.rand(1, 3, side, side)))
        head = torch.nn.Linear(model.config.vision_config.out_hidden_size, pooled_probe.shape[-1]).to(device)
        heads.append(head)
    if dense_weight and (views or maps_probe is None):
        raise ValueError("vision warm-up: dense_weight needs fresh crops (views=0) and a teacher built with maps=True")
    if distort and attribute_weight:
        raise ValueError("vision warm-up: attribute_weight needs undistorted crops (the attributes are the image's)")
    if distort and (views or scores is not None):
        raise ValueError("vision warm-up: distort needs fresh crops (views=0) and no scores (a distorted crop's "
                         "quality is not its image's MOS)")
    if views:
        fixed, targets = fixed_views(pictures, [images[i] for i in kept], teacher, views, side, crop_scale, seed,
                                     cache)
        targets = targets.to(device)
    if scores is not None:  # the MOS of the images read, standardised, and a head to predict it
        mos = torch.tensor([float(scores[i]) for i in kept])
        mos = _standardised(mos).to(device)
        score_head = torch.nn.Linear(model.config.vision_config.out_hidden_size, 1).to(device)
        heads.append(score_head)
    if dense_weight:  # output tokens form a grid of side / cell per side
        grid = side // cell
        dense_head = torch.nn.Linear(model.config.vision_config.out_hidden_size,
                                     sum(m.shape[1] for m in maps_probe)).to(device)
        heads.append(dense_head)
    if attribute_weight:  # what the measured teacher finds in each image as the model sees it, standardised
        found = torch.tensor([attributes(measure(load_image(images[i], max_pixels=side * side))) for i in kept])
        found = _standardised(found).to(device)
        attribute_head = torch.nn.Linear(model.config.vision_config.out_hidden_size, found.shape[1]).to(device)
        heads.append(attribute_head)
    blocks, merger = tower_parts(tower)
    groups = [{"params": blocks, "lr": learning_rate},
              {"params": merger + [p for h in heads for p in h.parameters()],
               "lr": learning_rate if fresh_learning_rate is None else fresh_learning_rate}]
    parameters = [p for group in groups for p in group["params"]]
    optimizer = torch.optim.AdamW(groups, weight_decay=0.05)
    steps = epochs * max(1, len(pictures) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=[group["lr"] for group in groups],
                                                   total_steps=steps, pct_start=0.05)
    history, order = [], []
    for step in range(steps):
        if len(order) < batch_size:
            order += rng.sample(range(len(pictures)), len(pictures))
        batch, order = order[:batch_size], order[batch_size:]
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):  # the weights stay float32
            if views:
                chosen = [rng.randrange(views) for _ in batch]
                crops = [cut(pictures[i], fixed[i][v], side) for i, v in zip(batch, chosen)]
                target = targets[batch, chosen]
            else:
                crops = [augment(pictures[i]) for i in batch]
                if teacher is None:
                    target = None
                elif dense_weight:
                    target, dense_target = (t.to(device) for t in teacher_features(teacher, crops, grid))
                else:
                    target = teacher_features(teacher, crops).to(device)
            inputs = processor.image_processor(images=crops, return_tensors="pt").to(device)
            tokens = tower(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"]).pooler_output
            tokens = tokens.reshape(len(crops), -1, tokens.shape[-1])
            pooled = tokens.mean(1)
            loss, entry = torch.zeros((), device=device), {"step": step + 1}
            if target is not None:
                loss = F.mse_loss(head(pooled), target)
                entry["feature_loss"] = round(loss.item(), 5)
            if dense_weight:
                dense_loss = F.mse_loss(dense_head(tokens), dense_target)
                loss = loss + dense_weight * dense_loss
                entry["dense_loss"] = round(dense_loss.item(), 5)
            if scores is not None:
                mos_loss = F.mse_loss(score_head(pooled).squeeze(1), mos[batch])
                loss = loss + score_weight * mos_loss
                entry["mos_loss"] = round(mos_loss.item(), 5)
            if attribute_weight:
                attribute_loss = F.mse_loss(attribute_head(pooled), found[batch])
                loss = loss + attribute_weight * attribute_loss
                entry["attribute_loss"] = round(attribute_loss.item(), 5)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        history.append({**entry, "loss": round(loss.item(), 5)})
        if log_every and (step + 1) % log_every == 0:
            print(f"vision warm-up step {step + 1}/{steps}: loss {loss.item():.4f}", flush=True)
    if embed is not None:
        del embed.forward
    tower.to(device="cpu", dtype=dtype)
    save_with_card(model, processor, output_dir, checkpoint)
    (output_dir / "warmup_log.json").write_text(json.dumps(history))
    return output_dir


def _standardised(values: "torch.Tensor") -> "torch.Tensor":
    """Each column (or a vector) at zero mean and unit standard deviation; a constant one stays at zero."""
    return (values - values.mean(0)) / values.std(0, correction=0).clamp_min(1e-6)


def _without_autocast(forward: Callable, device: str) -> Callable:
    """``forward`` run in float32 even inside an autocast region."""
    import torch

    def run(pixels):
        with torch.autocast(device, enabled=False):
            return forward(pixels.float())

    return run


def distortions(share: float):
    """A transform of uint8 image tensors that gives ``share`` of them one random distortion: Gaussian blur, Gaussian
    noise, JPEG compression, an exposure shift or a contrast change, each of a random strength."""
    import torch
    from torchvision.transforms import v2

    noise = [v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.GaussianNoise(sigma=sigma),
                         v2.ToDtype(torch.uint8, scale=True)]) for sigma in (0.02, 0.05, 0.1)]
    return v2.RandomApply([v2.RandomChoice([v2.GaussianBlur(9, sigma=(0.5, 3.0)), v2.RandomChoice(noise),
                                            v2.JPEG(quality=(5, 50)), v2.ColorJitter(brightness=(0.3, 1.7)),
                                            v2.ColorJitter(contrast=(0.3, 1.7))])], p=share)


def draw_view(picture, crop_scale: float, rng: random.Random) -> tuple:
    """A random crop box of ``crop_scale``..1 of the picture's area (torchvision's, from torch's RNG) and a coin
    flip from ``rng``: (top, left, height, width, flip)."""
    from torchvision.transforms import RandomResizedCrop

    return (*RandomResizedCrop.get_params(picture, scale=(crop_scale, 1.0), ratio=(3 / 4, 4 / 3)),
            rng.random() < 0.5)


def native_crop(side: int, cell: int) -> int:
    """The side of a native crop: one output token (``cell`` pixels) short of the input ``side``, at least one token.
    Trained on such crops, the tower meets the same scale when it sees the whole image at ``side``."""
    return max(cell, side - cell)


def cut(picture, view: tuple, side: int):
    """The crop ``view`` of a PIL picture, resized to ``side`` x ``side`` and flipped if the view says so."""
    from torchvision.transforms import v2

    crop = v2.functional.resized_crop(picture, *view[:4], [side, side], antialias=True)
    return v2.functional.horizontal_flip(crop) if view[4] else crop


def _split(output) -> tuple:
    """A teacher's output as ``(pooled features, feature maps or None)``."""
    return tuple(output) if isinstance(output, (tuple, list)) else (output, None)


def teacher_features(teacher: Callable, crops: list, grid: int | None = None):
    """The teacher's features of crops (PIL images or uint8 tensors), layer-normed per crop, on the CPU. With
    ``grid``, also its maps average-pooled to ``grid`` x ``grid``, one row per place in raster order
    (``[B, grid * grid, C]``, layer-normed per place): ``(pooled, dense)``."""
    import torch
    import torch.nn.functional as F
    from torchvision.transforms import v2

    pixels = torch.stack([v2.functional.to_image(c) for c in crops]).float() / 255.0
    with torch.no_grad():
        features, maps = _split(teacher(pixels))
        features = F.layer_norm(features.float().cpu(), features.shape[-1:])
        if grid is None:
            return features
        dense = torch.cat([F.adaptive_avg_pool2d(m.float(), grid) for m in maps], 1).flatten(2).transpose(1, 2)
    return features, F.layer_norm(dense.cpu(), dense.shape[-1:])


def fixed_views(pictures: list, paths: list, teacher: Callable, views: int, side: int, crop_scale: float,
                seed: int, cache: str | Path | None = None, batch_size: int = 32) -> tuple[list, "torch.Tensor"]:
    """``views`` crops per picture and the teacher's features of each, ``[N, views, D]``.

    Read from ``cache`` when it holds crops for the same images, views, side, crop scale and seed, made by the same
    teacher (checked on one crop); otherwise drawn from their own seeded generators (so the caller's random streams
    are the same either way), computed, and written to ``cache``.
    """
    import torch

    key = {"images": [str(p) for p in paths], "views": views, "side": side, "crop_scale": crop_scale, "seed": seed}
    probe = teacher_features(teacher, [cut(pictures[0], (0, 0, *pictures[0].size[::-1], False), side)])
    if cache and Path(cache).is_file():
        saved = torch.load(cache, weights_only=True)
        if saved["key"] == key and torch.allclose(saved["probe"], probe, atol=1e-4):
            print(f"vision warm-up: reusing the teacher's features of {len(paths) * views} crops from {cache}",
                  flush=True)
            return saved["boxes"], saved["features"]
        log.warning("vision warm-up: %s holds other crops or another teacher's features; computing anew", cache)
    with torch.random.fork_rng(devices=[]):  # crop boxes come from torch's CPU generator
        torch.manual_seed(seed)
        rng = random.Random(seed)
        boxes = [[draw_view(picture, crop_scale, rng) for _ in range(views)] for picture in pictures]
    pairs = [(i, v) for i in range(len(pictures)) for v in range(views)]
    rows = []
    for begin in range(0, len(pairs), batch_size):
        rows.append(teacher_features(teacher, [cut(pictures[i], boxes[i][v], side)
                                               for i, v in pairs[begin:begin + batch_size]]))
        if (begin // batch_size) % 50 == 0:
            print(f"vision warm-up: teacher features of {begin + len(rows[-1])}/{len(pairs)} crops", flush=True)
    table = torch.cat(rows).reshape(len(pictures), views, -1)
    if cache:
        torch.save({"key": key, "probe": probe, "boxes": boxes, "features": table}, cache)
    return boxes, table

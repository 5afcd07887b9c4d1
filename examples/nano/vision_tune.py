"""The vision fine-tune: a transplanted vision tower trained end to end on the train MOS before SFT.

The tower, plus a temporary linear head on the mean of its output tokens, regresses the standardised MOS of each
image. Its pretrained blocks take a low learning rate, so that they adapt to their rotary positions without
forgetting DINOv2, and the fresh merger and the head a higher one (``fresh_learning_rate``). Each crop is cut from the
image at the side the model sees and is one token row smaller (``native_crop``), so blur, noise and artefacts keep
the scale they have in the whole image. Only the vision tower is updated and saved; the head is kept only to probe
the tower on held-out sets (``probe``: the SRCC of its readout of the whole image), then thrown away.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Sequence
from pathlib import Path

from qponder_plugin.images import ImageError, load_image

log = logging.getLogger(__name__)


def tune_vision(checkpoint: str | Path, images: Sequence[str], scores: Sequence[float], output_dir: str | Path, *,
                score_weight: float = 1.0, epochs: float = 10, batch_size: int = 32, learning_rate: float = 1e-3,
                fresh_learning_rate: float | None = None, bf16: bool = False, seed: int = 0,
                sets: Sequence[int] | None = None, weights: Sequence[float] | None = None,
                probe: dict[str, tuple[list[str], list[float]]] | None = None, last_blocks: int | None = None,
                log_every: int = 10) -> Path:
    """Fine-tune the vision tower of ``checkpoint`` on ``scores`` (one MOS per image); write the whole model to
    ``output_dir``.

    Each step takes ``batch_size`` images, resizes each to the processor's input side, cuts a random native crop,
    flips half of them, and fits ``score_weight`` times the MSE of the standardised MOS (the weight scales the loss
    that gradient clipping at norm 1 sees). ``fresh_learning_rate`` (default: ``learning_rate``) is the rate of the
    merger and the temporary head, while the tower's blocks keep ``learning_rate``. With ``bf16``, the tower's forward
    passes run under bfloat16 autocast (faster on CPUs with AMX and on recent GPUs; the weights, the optimiser and the
    patch embedding stay float32). Unreadable images are skipped with a warning, with their scores. Runs on CUDA when
    available. ``sets`` (one id per image) standardises the MOS within each set, for sets rated on different scales or
    by different panels; by default, all images are one set. Without ``weights``, each epoch visits every image once;
    with them (one per image), each batch draws images with replacement in proportion to their weights, for ``epochs``
    times as many image-steps as images. ``last_blocks`` trains only the tower's last blocks (and the mergers); the
    patch embedding and the earlier blocks stay frozen, and no gradient is computed through them. ``probe`` maps a
    name to held-out ``(images, scores)``: after training, the head reads the whole image (no crop) and the SRCC of
    each set goes to ``tune_probe.json``. Returns ``output_dir``; the per-step losses (total and MOS) go to
    ``tune_log.json``.
    """
    import torch
    import torch.nn.functional as F
    from qponder_plugin.training.evaluate import metrics
    from qponder_plugin.training.trainers import load_policy, save_with_card, tower_parts, vision_tower
    from torchvision.transforms import v2

    from qponder_plugin.default_plugins.transformers_backend import pixel_budget

    if len(scores) != len(images):
        raise ValueError(f"vision fine-tune: {len(scores)} scores for {len(images)} images")
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
    resize = v2.Resize((side, side), antialias=True)  # once, at load: the pictures stay small in memory
    pictures, kept = _load(images, side, resize)
    cell = model.config.vision_config.patch_size * model.config.vision_config.spatial_merge_size  # one output token
    augment = v2.Compose([v2.RandomCrop(native_crop(side, cell)), v2.RandomHorizontalFlip()])
    mos = torch.tensor([float(scores[i]) for i in kept])  # of the images read
    members = torch.tensor([0 if sets is None else sets[i] for i in kept])
    for member in members.unique():
        mos[members == member] = _standardised(mos[members == member])
    mos = mos.to(device)
    score_head = torch.nn.Linear(model.config.vision_config.out_hidden_size, 1).to(device)
    blocks, merger = tower_parts(tower)
    if last_blocks is not None:
        trained = {id(p) for block in tower.blocks[len(tower.blocks) - last_blocks:] for p in block.parameters()}
        for parameter in blocks:
            parameter.requires_grad = id(parameter) in trained
        blocks = [p for p in blocks if p.requires_grad]
    groups = [{"params": blocks, "lr": learning_rate},
              {"params": merger + list(score_head.parameters()),
               "lr": learning_rate if fresh_learning_rate is None else fresh_learning_rate}]
    parameters = [p for group in groups for p in group["params"]]
    optimizer = torch.optim.AdamW(groups, weight_decay=0.05)
    steps = max(1, round(epochs * (len(pictures) // batch_size)))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=[group["lr"] for group in groups],
                                                   total_steps=steps, pct_start=0.05)
    history, order = [], []
    drawn = None if weights is None else [float(weights[i]) for i in kept]
    for step in range(steps):
        if drawn is not None:
            order = rng.choices(range(len(pictures)), weights=drawn, k=batch_size)
        elif len(order) < batch_size:
            order += rng.sample(range(len(pictures)), len(pictures))
        batch, order = order[:batch_size], order[batch_size:]
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):  # the weights stay float32
            pooled = _pooled(tower, processor, [augment(pictures[i]) for i in batch], device)
            mos_loss = F.mse_loss(score_head(pooled).squeeze(1), mos[batch])
            loss = score_weight * mos_loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        history.append({"step": step + 1, "mos_loss": round(mos_loss.item(), 5), "loss": round(loss.item(), 5)})
        if log_every and (step + 1) % log_every == 0:
            print(f"vision fine-tune step {step + 1}/{steps}: loss {loss.item():.4f}", flush=True)
    if embed is not None:
        del embed.forward
    readout = {}
    if probe:
        tower.eval()
        with torch.no_grad():
            for name, (paths, values) in probe.items():
                shown, read = _load(paths, side, resize)
                predicted = []
                for start in range(0, len(shown), batch_size):
                    pooled = _pooled(tower, processor, shown[start:start + batch_size], device)
                    predicted += score_head(pooled).squeeze(1).tolist()
                readout[name] = metrics(predicted, [float(values[i]) for i in read])
                print(f"vision fine-tune probe, {name}: SRCC {readout[name]['srcc']:.3f}", flush=True)
    tower.to(device="cpu", dtype=dtype)
    save_with_card(model, processor, output_dir, checkpoint)
    (output_dir / "tune_log.json").write_text(json.dumps(history))
    if readout:
        (output_dir / "tune_probe.json").write_text(json.dumps(readout, indent=2, default=str))
    return output_dir


def _pooled(tower, processor, pictures: list, device: str):
    """The mean of the tower's output tokens for each picture (all of one size), DeepStack mergers' added."""
    inputs = processor.image_processor(images=pictures, return_tensors="pt").to(device)
    output = tower(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"])
    tokens = sum(getattr(output, "deepstack_features", None) or [], output.pooler_output)
    return tokens.reshape(len(pictures), -1, tokens.shape[-1]).mean(1)


def _load(images: Sequence[str], side: int, resize) -> tuple[list, list[int]]:
    """The readable ``images`` resized to ``side`` and the indices they had; unreadable ones are skipped with a
    warning."""
    pictures, kept = [], []
    for index, path in enumerate(images):
        try:
            pictures.append(resize(load_image(path, max_pixels=(2 * side) ** 2)))
            kept.append(index)
        except ImageError as exc:
            log.warning("vision fine-tune skips an image: %s", exc)
    if not pictures:
        raise ValueError("vision fine-tune: none of the images could be read")
    return pictures, kept


def fast_bf16() -> bool:
    """Whether bfloat16 autocast runs natively here: a CUDA GPU that supports it, or a CPU with AMX or AVX512-BF16
    (read from /proc/cpuinfo; elsewhere, False)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return False
    return bool(flags & {"amx_bf16", "avx512_bf16"})


def _standardised(values):
    """A vector at zero mean and unit standard deviation; a constant one stays at zero."""
    return (values - values.mean(0)) / values.std(0, correction=0).clamp_min(1e-6)


def _without_autocast(forward: Callable, device: str) -> Callable:
    """``forward`` run in float32 even inside an autocast region."""
    import torch

    def run(pixels):
        with torch.autocast(device, enabled=False):
            return forward(pixels.float())

    return run


def native_crop(side: int, cell: int) -> int:
    """The side of a native crop: one output token (``cell`` pixels) short of the input ``side``, at least one token.
    Trained on such crops, the tower meets the same scale when it sees the whole image at ``side``."""
    return max(cell, side - cell)

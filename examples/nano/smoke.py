"""The tiny offline Qwen2.5-VL "smoke" model for tests and benchmarks: no hub, no network, a few seconds on a CPU.

``build_tiny_model(path)`` writes a real ``Qwen2_5_VLForConditionalGeneration`` checkpoint with a real
``Qwen2_5_VLProcessor`` and a byte-level BPE tokenizer trained here (``builders``). With ``trained=True`` (the
default), a short ``transformers.Trainer`` run teaches it the ``qponder`` answer format, with a score that follows one
visible rule: brightness (dark ≈ 1, bright ≈ 5). It is a *smoke model*: it proves the plumbing end to end, it does
not judge quality. ``family="qwen3-vl"`` or ``"qwen3.5"`` builds the same from a tiny Qwen3-VL (with a Thinking-style
chat template) or Qwen3.5 (with its own template), trained on prompts written as the backend writes them (the template
opens ``<think>``, or no-think closes it empty); 40 steps (about ten seconds on an idle CPU) already teach them the
format. Heavy libraries are imported inside the functions.

Command line: ``python examples/nano/smoke.py DIR [--untrained] [--family qwen2.5-vl|qwen3-vl|qwen3.5]``.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from builders import (
    THINK_TOKENS,
    THINKING_CHAT_TEMPLATE,
    build_config,
    build_processor,
    build_qwen3_5_config,
    build_qwen3_processor,
    build_qwen3_vl_config,
    build_tokenizer,
    qwen3_5_chat_template,
)

from qponder_plugin.default_plugins.profiles import QPONDER
from qponder_plugin.spec import MODEL_CARD

IMAGE_SIDE = 56  # pixels per side the processor feeds the vision tower: 4x4 patches -> 4 merged image tokens
QWEN3_IMAGE_SIDE = 64  # the same 4 merged image tokens with Qwen3-VL's and Qwen3.5's 16-pixel patches
FAMILIES = ("qwen2.5-vl", "qwen3-vl", "qwen3.5")
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


def _prompt_and_completion(processor, family: str, text: str, image, brightness: float, think: bool,
                           rng: random.Random) -> tuple[str, str]:
    """The prompt as the backend writes it (Qwen3 templates open ``<think>`` or close it empty) and the rest."""
    completion = completion_for(brightness, think, rng)
    if family == "qwen2.5-vl":
        return processor.apply_chat_template(_messages(text), add_generation_prompt=True), completion
    from qponder_plugin.backend import Request
    from qponder_plugin.default_plugins.transformers_backend import chat_text

    prefix = "" if think else QPONDER.answer_prefix
    prompt = chat_text(processor, Request(image, text, prefix=prefix))
    return prompt, completion.removeprefix(prefix or ("<think>" if prompt.endswith("<think>\n") else ""))


def _examples(processor, count: int, seed: int, family: str = "qwen2.5-vl") -> list[dict]:
    """Prompt + completion pairs with the loss on the completion only."""
    rng = random.Random(seed)
    examples = []
    for index in range(count):
        brightness, think = rng.random(), index % 2 == 0
        image = solid_image(brightness, seed=seed * 100_000 + index)
        text = QPONDER.prompt(think)
        if think and index % 4 == 0:  # told the score, it still reasons: a stand-in distillation teacher
            text += TEACHER_HINT.format(mos=brightness_score(brightness))
        prompt, completion = _prompt_and_completion(processor, family, text, image, brightness, think, rng)
        full = prompt + completion + "<|im_end|>"
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

        padded = {"input_ids": pad("input_ids", pad_id), "attention_mask": pad("attention_mask", 0),
                  "labels": pad("labels", -100), "pixel_values": torch.cat([b["pixel_values"] for b in batch]),
                  "image_grid_thw": torch.cat([b["image_grid_thw"] for b in batch])}
        if "mm_token_type_ids" in batch[0]:  # Qwen3-VL's and Qwen3.5's M-RoPE needs them
            padded["mm_token_type_ids"] = pad("mm_token_type_ids", 0)
        return padded

    return collate


def _new_model(family: str, corpus: list[str]):
    """The processor and the untrained model of ``family``."""
    from transformers import AutoModelForImageTextToText, Qwen2_5_VLForConditionalGeneration

    if family == "qwen2.5-vl":
        processor = build_processor(build_tokenizer(corpus), side=IMAGE_SIDE)
        return processor, Qwen2_5_VLForConditionalGeneration(build_config(processor.tokenizer))
    template = THINKING_CHAT_TEMPLATE if family == "qwen3-vl" else qwen3_5_chat_template()
    tokenizer = build_tokenizer(corpus, chat_template=template, added_tokens=THINK_TOKENS)
    processor = build_qwen3_processor(tokenizer, QWEN3_IMAGE_SIDE, template)
    config = build_qwen3_vl_config(tokenizer) if family == "qwen3-vl" else build_qwen3_5_config(tokenizer)
    return processor, AutoModelForImageTextToText.from_config(config)


def build_tiny_model(path: str | Path, *, family: str = "qwen2.5-vl", trained: bool = True, seed: int = 0,
                     steps: int = 400) -> Path:
    """Write a tiny checkpoint of ``family`` (one of ``FAMILIES``) to ``path`` and return it."""
    import torch
    from transformers import Trainer, TrainingArguments, set_seed

    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; one of {', '.join(FAMILIES)}")
    set_seed(seed)
    path = Path(path)
    rng = random.Random(seed)
    corpus = [_CORPUS, QPONDER.think_prompt, QPONDER.nothink_prompt]
    corpus += [completion_for(rng.random(), True, rng) for _ in range(200)]
    processor, model = _new_model(family, corpus)
    if trained:
        args = TrainingArguments(output_dir=str(path / "_trainer"), max_steps=steps, per_device_train_batch_size=16,
                                 learning_rate=3e-3, warmup_steps=20, lr_scheduler_type="cosine", weight_decay=0.0,
                                 logging_strategy="no", save_strategy="no", report_to=[], disable_tqdm=True,
                                 use_cpu=True, seed=seed, dataloader_num_workers=0, remove_unused_columns=False)
        trainer = Trainer(model=model, args=args, train_dataset=_examples(processor, 512, seed, family),
                          data_collator=_collate(processor.tokenizer.pad_token_id))
        trainer.train()
        model = trainer.model
    model.generation_config.eos_token_id = processor.tokenizer.eos_token_id
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    model.to(torch.float32).save_pretrained(path)
    processor.save_pretrained(path)
    name = "qponder-smoke" if family == "qwen2.5-vl" else f"qponder-smoke-{family}"
    (path / MODEL_CARD).write_text(json.dumps({"profile": QPONDER.name, "name": name,
                                                   "trained": trained, "rule": "score = 1 + 4 * brightness"}))
    return path


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python examples/nano/smoke.py", description="Build the tiny smoke model.")
    parser.add_argument("dir")
    parser.add_argument("--untrained", action="store_true", help="keep the random weights")
    parser.add_argument("--family", choices=FAMILIES, default="qwen2.5-vl")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    print(build_tiny_model(args.dir, family=args.family, trained=not args.untrained))


if __name__ == "__main__":
    main()

"""Tiny offline Qwen2.5-VL models for tests, examples and CI: no hub, no network, a few seconds on a CPU.

``build_tiny_model(path)`` writes a real ``Qwen2_5_VLForConditionalGeneration`` checkpoint with a real
``Qwen2_5_VLProcessor`` and a byte-level BPE tokenizer trained here. With ``trained=True`` (the default), a short
``transformers.Trainer`` run teaches it the ``qponder`` answer format, with a score that follows one visible rule:
brightness (dark ≈ 1, bright ≈ 5). It is a *smoke model*: it proves the plumbing end to end, it does not judge
quality. Heavy libraries are imported inside the functions.

Command line: ``python -m qponder_plugin.testing DIR [--untrained]``.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from .profiles import QPONDER

IMAGE_SIDE = 56  # pixels per side the processor feeds the vision tower: 4x4 patches -> 4 merged image tokens
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
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


def build_tokenizer(corpus: list[str], vocab_size: int = 600):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),  # one token per digit, as in Qwen: probability scores need it
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   chat_template=CHAT_TEMPLATE, model_max_length=2048)


def build_processor(tokenizer, side: int = IMAGE_SIDE):
    """The real Qwen2.5-VL processor, resizing every image to about ``side`` x ``side`` pixels."""
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    pixels = side * side
    image_processor = Qwen2VLImageProcessor(min_pixels=pixels, max_pixels=pixels, patch_size=14, merge_size=2)
    return Qwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                               video_processor=Qwen2VLVideoProcessor(), chat_template=CHAT_TEMPLATE)


def build_config(tokenizer, hidden: int = 128, layers: int = 2, vision_depth: int = 2, window: int = 56):
    """A small Qwen2.5-VL config: head_dim 64 in both towers (vLLM's CPU attention needs >= 64). ``window`` is the
    vision tower's attention window in pixels (Qwen2.5-VL uses 112); its last block attends to the whole image."""
    from transformers import Qwen2_5_VLConfig

    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in [
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>")]}
    heads = hidden // 64
    text = dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=2048,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [8, 12, 12]},
                bos_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id)
    vision = dict(depth=vision_depth, hidden_size=hidden, intermediate_size=2 * hidden, num_heads=heads,
                  out_hidden_size=hidden, patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                  window_size=window, fullatt_block_indexes=[vision_depth - 1])
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids)


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
    processor = build_processor(build_tokenizer(corpus))
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
    (path / "qponder.json").write_text(json.dumps({"profile": QPONDER.name, "name": "qponder-smoke",
                                                   "trained": trained, "rule": "score = 1 + 4 * brightness"}))
    return path


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0].startswith("-"):
        raise SystemExit("usage: python -m qponder_plugin.testing DIR [--untrained]")
    print(build_tiny_model(argv[0], trained="--untrained" not in argv))


if __name__ == "__main__":
    main()

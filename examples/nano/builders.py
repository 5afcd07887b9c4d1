"""Builders of small Qwen-family models made offline: a byte-level BPE tokenizer trained on a corpus, the real
processor, and a config (Qwen2.5-VL, and for tests Qwen3-VL and Qwen3.5). The nano recipe (``train_nano.py``) and the
smoke model (``smoke.py``) build their models with them. Heavy libraries are imported inside the functions.
"""

from __future__ import annotations

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
# Qwen3-VL-*-Thinking's generation prompt opens the reasoning itself and takes no enable_thinking switch. Its real
# template ships only with the hub checkpoints: this is the template above with that generation prompt.
THINKING_CHAT_TEMPLATE = CHAT_TEMPLATE.replace("<|im_start|>assistant\n{% endif %}",
                                               "<|im_start|>assistant\n<think>\n{% endif %}")
THINK_TOKENS = ["<think>", "</think>"]  # plain added tokens in Qwen3 tokenizers (kept by skip_special_tokens)


def build_tokenizer(corpus: list[str], vocab_size: int = 600, chat_template: str = CHAT_TEMPLATE,
                    added_tokens: list[str] | tuple = ()):
    """A byte-level BPE trained on ``corpus``, one token per digit, with Qwen's special tokens, ``added_tokens`` as
    plain tokens, and the chat template."""
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
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   chat_template=chat_template, model_max_length=2048)
    fast.add_tokens(list(added_tokens))
    return fast


def build_processor(tokenizer, side: int):
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

    heads = hidden // 64
    text = dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=2048,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [8, 12, 12]},
                bos_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id)
    vision = dict(depth=vision_depth, hidden_size=hidden, intermediate_size=2 * hidden, num_heads=heads,
                  out_hidden_size=hidden, patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                  window_size=window, fullatt_block_indexes=[vision_depth - 1])
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **_vision_token_ids(tokenizer))


def qwen3_5_chat_template() -> str:
    """Qwen3.5's own chat template (Qwen3.5-4B and larger: thinking on unless ``enable_thinking=False``), as trl ships
    it in ``trl/chat_templates/qwen3_5_think.jinja``."""
    from importlib.resources import files

    template = files("trl") / "chat_templates" / "qwen3_5_think.jinja"
    if not template.is_file():
        raise RuntimeError("the Qwen3.5 chat template comes from trl (pip install 'qponder-plugin[train]')")
    return template.read_text()


def _vision_token_ids(tokenizer) -> dict[str, int]:
    return {name: tokenizer.convert_tokens_to_ids(token) for name, token in [
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>")]}


def build_qwen3_processor(tokenizer, side: int, chat_template: str, patch_size: int = 16):
    """The real Qwen3-VL processor (Qwen3.5 uses it too): ``patch_size``-pixel patches (Qwen3-VL's own are 16),
    about ``side`` x ``side`` pixels."""
    from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor, Qwen3VLVideoProcessor

    pixels = side * side
    image_processor = Qwen2VLImageProcessor(min_pixels=pixels, max_pixels=pixels, patch_size=patch_size, merge_size=2)
    return Qwen3VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                            video_processor=Qwen3VLVideoProcessor(patch_size=patch_size, merge_size=2),
                            chat_template=chat_template)


def _qwen3_vision(hidden: int, depth: int) -> dict:
    return dict(depth=depth, hidden_size=hidden, intermediate_size=2 * hidden, num_heads=hidden // 64,
                patch_size=16, spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=hidden,
                num_position_embeddings=256)


def build_qwen3_vl_config(tokenizer, hidden: int = 128, layers: int = 2, vision_depth: int = 2):
    """A small Qwen3-VL config (DeepStack on the first vision block); head_dim 64 for vLLM's CPU attention."""
    from transformers import Qwen3VLConfig

    heads = hidden // 64
    text = dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=heads, head_dim=64, max_position_embeddings=2048,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [8, 12, 12],
                                 "mrope_interleaved": True},
                bos_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id)
    vision = dict(_qwen3_vision(hidden, vision_depth), deepstack_visual_indexes=[0])
    return Qwen3VLConfig(text_config=text, vision_config=vision, **_vision_token_ids(tokenizer))


def build_qwen3_5_config(tokenizer, hidden: int = 128, vision_depth: int = 2):
    """A small Qwen3.5 config with its vision tower: one linear-attention (gated delta) layer, then one full-attention
    layer with head_dim 64 and Qwen3.5's partial (quarter) rotary."""
    from transformers import Qwen3_5Config

    heads = hidden // 64
    text = dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                layer_types=["linear_attention", "full_attention"], num_attention_heads=heads,
                num_key_value_heads=heads, head_dim=64, linear_num_key_heads=heads, linear_num_value_heads=heads,
                linear_key_head_dim=64, linear_value_head_dim=64, max_position_embeddings=2048,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25,
                                 "mrope_section": [3, 3, 2], "mrope_interleaved": True},
                bos_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id)
    return Qwen3_5Config(text_config=text, vision_config=_qwen3_vision(hidden, vision_depth),
                         **_vision_token_ids(tokenizer))

"""The ``transformers`` backend: in-process, batched, the embedded default.

Loads any hub id (or ``owner/name/subfolder``) or local folder through ``AutoProcessor`` and
``AutoModelForImageTextToText`` (safetensors only; ``trust_remote_code`` off unless asked). Prompts come from the
model's own chat template, with reasoning switched on or off to match the request (``chat_text``). Batches use left
padding. Greedy decoding by default. Per-step log-probabilities of the readout words (digits, level words) are
recorded by a logits processor while decoding, so memory does not grow with the vocabulary: a 7B model's full
logits for 512 steps would not fit.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Collection, Sequence

import torch
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
)

from ..backend import Backend, BackendError, Completion, Request
from ..scoring import READOUT_WORDS
from ..spec import hub_subfolder


def pick_device(device: str | None) -> str:
    if device and device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def pick_dtype(device: str, dtype: str | torch.dtype | None) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype and dtype != "auto":
        return getattr(torch, dtype)
    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def pick_attention(device: str, requested: str | None) -> str | None:
    if requested:
        return requested
    if device.startswith("cuda") and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def load_processor(model: str, *, trust_remote_code: bool = False, revision: str | None = None):
    """The model's multimodal processor. A bare tokenizer (what transformers returns for Qwen2.5-VL without
    torchvision) is an error here, not a silent text-only run."""
    repo, where = hub_subfolder(model)
    try:
        processor = AutoProcessor.from_pretrained(repo, trust_remote_code=trust_remote_code, revision=revision,
                                                  **where)
    except (OSError, ValueError, ImportError) as exc:
        raise BackendError(f"cannot load the processor of {model!r}: {exc}") from exc
    if getattr(processor, "image_processor", None) is None:
        raise BackendError(f"{model!r}: AutoProcessor returned a bare tokenizer, not an image processor; for "
                           "Qwen2.5-VL install torchvision (pip install 'qponder-plugin[transformers]')")
    return processor


def pixel_budget(image_processor) -> int | None:
    """The most pixels a Qwen2-VL-style processor keeps (it resizes anything larger down to this)."""
    if not hasattr(image_processor, "merge_size"):
        return None
    budget = getattr(image_processor, "max_pixels", None) or getattr(image_processor.size, "longest_edge", None)
    return int(budget) if budget else None


def readout_token_ids(tokenizer, words: Collection[str] = READOUT_WORDS) -> dict[str, list[int]]:
    """Token ids of every token that decodes to one of ``words`` (spaces aside), grouped by word: by default the
    digits and Q-Align's level words that :mod:`qponder_plugin.scoring` reads."""
    groups: dict[str, list[int]] = {}
    for token_id in tokenizer.get_vocab().values():
        text = tokenizer.decode([token_id]).strip()
        if text in words:  # "3" but not "²" or "３"; "good" and " good"
            groups.setdefault(text, []).append(token_id)
    return groups


def readout_logprobs(logits: torch.Tensor, groups: dict[str, list[int]]) -> torch.Tensor:
    """``[B, V]`` logits -> ``[B, len(groups)]`` log-probabilities of each group's tokens (in sorted group order)."""
    logprobs = logits.float().log_softmax(-1)
    return torch.stack([logprobs[:, groups[w]].logsumexp(-1) for w in sorted(groups)], -1)


def thinking_switch(processor, think: bool) -> dict:
    """The chat-template arguments that switch reasoning on or off: ``enable_thinking`` for templates that take it
    (Qwen3.5), nothing for the others."""
    return {"enable_thinking": think} if "enable_thinking" in str(processor.chat_template or "") else {}


def chat_text(processor, request: Request) -> str:
    """The prompt in the model's own chat template, ending inside the assistant turn after ``request.prefix``.

    A request with an answer prefix (no-think) switches reasoning off: ``enable_thinking=False`` for templates that
    take it (Qwen3.5 then writes an empty ``<think>`` block), and a ``<think>`` that the template opens regardless
    (Qwen3-VL Thinking) is closed empty, so the prefix follows at once. Without a prefix, reasoning is switched on.
    A request without an image (``image=None``) gets a text-only user turn.
    """
    think = not request.prefix
    messages = [{"role": "system", "content": request.system}] if request.system else []
    image = [] if request.image is None else [{"type": "image"}]
    messages.append({"role": "user", "content": [*image, {"type": "text", "text": request.prompt}]})
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False,
                                         **thinking_switch(processor, think))
    return (text if think else close_open_think(text)) + request.prefix


def opens_think(prompt: str) -> bool:
    """Whether ``prompt`` ends inside a ``<think>`` block that the chat template opened (Qwen3-VL Thinking, Qwen3.5
    with reasoning on): the model's answer then starts with its reasoning, not with ``<think>``."""
    return prompt.rstrip().endswith("<think>")


def close_open_think(prompt: str) -> str:
    """``prompt`` with a ``<think>`` left open at its end closed empty, as Qwen3 templates do for no reasoning."""
    return prompt.rstrip() + "\n\n</think>\n\n" if opens_think(prompt) else prompt


class ReadoutRecorder(LogitsProcessor):
    """Records, at every decoding step, the log-probability of each readout word (the digits, the level words)."""

    def __init__(self, tokenizer):
        self.groups = readout_token_ids(tokenizer)
        self.words = sorted(self.groups)
        self.steps: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.steps.append(readout_logprobs(scores, self.groups).cpu())
        return scores

    def step_logprobs(self, row: int, length: int) -> list[dict[str, float]]:
        return [dict(zip(self.words, self.steps[i][row].tolist())) for i in range(length)]


class TransformersBackend(Backend):
    name = "transformers"

    def __init__(self, model: str, *, device: str | None = None, dtype: str | None = None,
                 trust_remote_code: bool = False, revision: str | None = None,
                 attn_implementation: str | None = None):
        self.device = pick_device(device)
        self.dtype = pick_dtype(self.device, dtype)
        self.processor = load_processor(model, trust_remote_code=trust_remote_code, revision=revision)
        repo, where = hub_subfolder(model)
        try:
            self.model = AutoModelForImageTextToText.from_pretrained(
                repo, dtype=self.dtype, trust_remote_code=trust_remote_code, revision=revision,
                use_safetensors=True, attn_implementation=pick_attention(self.device, attn_implementation), **where,
            ).to(self.device).eval()
        except (OSError, ValueError, ImportError) as exc:
            raise BackendError(f"cannot load {model!r} with transformers: {exc}") from exc
        self.max_pixels = pixel_budget(self.processor.image_processor)
        self.tokenizer = self.processor.tokenizer
        self.tokenizer.padding_side = "left"
        self.recorder = ReadoutRecorder(self.tokenizer)
        config = self.model.generation_config
        self.eos_ids = {config.eos_token_id} if isinstance(config.eos_token_id, int) else set(config.eos_token_id or [])
        self.eos_ids.add(self.tokenizer.eos_token_id)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(self.eos_ids)

    def generate(self, requests: Sequence[Request], *, max_new_tokens: int, n: int = 1,
                 temperature: float = 1.0) -> list[list[Completion] | BaseException]:
        texts = [chat_text(self.processor, r) for r in requests]
        inputs = self.processor(text=texts, images=[r.image for r in requests], return_tensors="pt",
                                padding=True).to(self.device)
        sampling = n > 1
        config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=sampling, num_return_sequences=n,
                                  temperature=temperature if sampling else None, top_k=None, top_p=None,
                                  eos_token_id=sorted(self.eos_ids), pad_token_id=self.pad_id)
        self.recorder.steps = []
        try:
            with torch.inference_mode():
                sequences = self.model.generate(**inputs, generation_config=config,
                                                logits_processor=LogitsProcessorList([self.recorder]))
        except torch.OutOfMemoryError as exc:
            raise BackendError(f"out of memory on {self.device} for a batch of {len(requests)}; "
                               "lower --batch-size or --max-pixels") from exc
        generated = sequences[:, inputs["input_ids"].shape[1]:].tolist()
        completions = [self._completion(row, ids) for row, ids in enumerate(generated)]
        return [completions[i * n:(i + 1) * n] for i in range(len(requests))]

    def _completion(self, row: int, ids: list[int]) -> Completion:
        end = next((i for i, t in enumerate(ids) if t in self.eos_ids), None)
        ids = ids if end is None else ids[:end]
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        pieces = [self.tokenizer.decode([t], skip_special_tokens=True) for t in ids]
        return Completion.from_pieces(text, pieces, self.recorder.step_logprobs(row, len(ids)),
                                      "length" if end is None else "stop",
                                      lambda i: self.tokenizer.decode(ids[:i], skip_special_tokens=True))

    def close(self) -> None:
        self.model = self.processor = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

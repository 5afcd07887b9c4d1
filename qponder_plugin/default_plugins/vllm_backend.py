"""The ``vllm`` backend: vLLM's offline engine (``vllm.LLM``) in-process.

- Prompts are built by the model's own processor and chat template. The no-think answer prefix is appended, so the
  model continues the assistant turn. Images go in as ``multi_modal_data``: the core loader's pixels, already within
  the processor's pixel budget, so every backend sees the same image.
- The score reads the log-probabilities of the digit tokens (and level words) at the answer. vLLM >= 0.32 returns
  exactly those tokens (``logprob_token_ids``). Older engines fall back to the top 20 log-probabilities, with a
  warning: a digit outside the top 20 then shifts the score slightly.
- Decoding is greedy by default; ``n > 1`` samples. A peft adapter (a ``qponder train`` output) is served with a
  ``LoRARequest``, given as ``lora=DIR`` or as the model folder itself (its base model is then loaded).
- Requests are queued one by one, so a request that the engine refuses (too long, bad image) becomes that row's
  ``backend_error`` while the rest of the batch runs.

The engine options default to a 7B model on one GPU; anything else ``vllm.LLM`` takes passes through
``engine_args``. vLLM starts worker processes, so scripts that use this backend need an
``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")  # stdout carries results (--json, --csv)
from vllm import LLM, SamplingParams  # noqa: E402
from vllm.lora.request import LoRARequest  # noqa: E402

from ..backend import Backend, BackendError, Completion, Request
from ..spec import checkpoint_folder
from .transformers_backend import chat_text, load_processor, pixel_budget, readout_token_ids

log = logging.getLogger(__name__)

TOP_LOGPROBS = 20  # the fallback on engines without logprob_token_ids


def adapter_config(folder: str) -> dict | None:
    """A peft adapter folder's ``adapter_config.json``, or None when ``folder`` is not an adapter."""
    config = Path(folder, "adapter_config.json")
    return json.loads(config.read_text()) if config.is_file() else None


class VLLMBackend(Backend):
    name = "vllm"

    def __init__(self, model: str, *, lora: str | None = None, tensor_parallel_size: int = 1,
                 gpu_memory_utilization: float = 0.9, max_model_len: int = 8192, dtype: str = "auto",
                 enforce_eager: bool = False, trust_remote_code: bool = False, revision: str | None = None,
                 seed: int = 0, **engine_args):
        adapter = adapter_config(lora or model)
        if lora is None and adapter and adapter.get("base_model_name_or_path"):
            model, lora = adapter["base_model_name_or_path"], model
        self.lora = None
        if lora:
            if adapter is None:
                raise BackendError(f"{lora} is not a peft adapter folder (no adapter_config.json)")
            engine_args.update(enable_lora=True, max_lora_rank=max(8, adapter.get("r", 16)), max_loras=1)
            self.lora = LoRARequest("qponder", 1, str(lora))
        try:
            model = checkpoint_folder(model, revision)  # vLLM loads no hub subfolder itself
        except (OSError, ValueError) as exc:
            raise BackendError(f"cannot fetch {model!r}: {exc}") from exc
        self.processor = load_processor(model, trust_remote_code=trust_remote_code, revision=revision)
        try:
            self.llm = LLM(model=model, tensor_parallel_size=tensor_parallel_size,
                           gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len, dtype=dtype,
                           enforce_eager=enforce_eager, trust_remote_code=trust_remote_code, revision=revision,
                           seed=seed, limit_mm_per_prompt={"image": 1}, **engine_args)
        except (OSError, ValueError, RuntimeError) as exc:
            raise BackendError(f"cannot load {model!r} with vLLM: {exc}") from exc
        self.max_pixels = pixel_budget(self.processor.image_processor)
        self.tokenizer = self.llm.get_tokenizer()
        self.word_of = {i: word for word, ids in readout_token_ids(self.tokenizer).items() for i in ids}
        self.exact_words = self._accepts_token_ids()
        if not self.exact_words:
            log.warning("this vLLM has no logprob_token_ids: reading the top %d log-probabilities instead, so a "
                        "digit outside them shifts the score slightly", TOP_LOGPROBS)

    def _accepts_token_ids(self) -> bool:
        try:
            SamplingParams(logprob_token_ids=sorted(self.word_of))
        except TypeError:
            return False
        return True

    def _sampling(self, max_new_tokens: int, n: int, temperature: float) -> SamplingParams:
        logprobs = {"logprob_token_ids": sorted(self.word_of)} if self.exact_words else {"logprobs": TOP_LOGPROBS}
        return SamplingParams(n=n, temperature=temperature if n > 1 else 0.0, max_tokens=max_new_tokens,
                              skip_special_tokens=True, **logprobs)

    def generate(self, requests: Sequence[Request], *, max_new_tokens: int, n: int = 1,
                 temperature: float = 1.0) -> list[list[Completion] | BaseException]:
        params = self._sampling(max_new_tokens, n, temperature)
        results: list[list[Completion] | BaseException] = []
        queued: list[int] = []
        for index, request in enumerate(requests):
            prompt = {"prompt": chat_text(self.processor, request), "multi_modal_data": {"image": request.image}}
            try:
                self.llm.enqueue(prompt, params, lora_request=self.lora, use_tqdm=False)
            except Exception as exc:  # noqa: BLE001 - the engine refused this request alone
                results.append(exc)
                continue
            queued.append(index)
            results.append([])
        outputs = self.llm.wait_for_completion(use_tqdm=False)  # in the order they were queued
        for index, output in zip(queued, outputs, strict=True):
            results[index] = [self._completion(c) for c in output.outputs]
        return results

    def _completion(self, output) -> Completion:
        ids = list(output.token_ids)
        pieces = [self.tokenizer.decode([t], skip_special_tokens=True) for t in ids]
        steps = [self._readout(step) for step in list(output.logprobs or [{}] * len(ids))]
        finish = "length" if output.finish_reason == "length" else "stop"
        return Completion.from_pieces(output.text, pieces, steps, finish,
                                      lambda i: self.tokenizer.decode(ids[:i], skip_special_tokens=True))

    def _readout(self, step) -> dict[str, float]:
        """Log-probability of each readout word (digit, level word) at one step (tokens of one word are summed)."""
        if not self.exact_words:
            return {lp.decoded_token: lp.logprob for lp in step.values() if lp.decoded_token is not None}
        grouped: dict[str, list[float]] = {}
        for token_id, lp in step.items():
            if token_id in self.word_of:
                grouped.setdefault(self.word_of[token_id], []).append(lp.logprob)
        return {word: float(np.logaddexp.reduce(values)) for word, values in grouped.items()}

    def close(self) -> None:
        self.llm = self.processor = None

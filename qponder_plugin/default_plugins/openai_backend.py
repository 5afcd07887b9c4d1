"""The ``openai`` backend: any OpenAI-compatible chat-completions server (``vllm serve``, SGLang, LMDeploy, TGI, a
hosted API), through the official async ``openai`` client.

- Images go as base64 PNG data URLs of the core loader's pixels, so every backend sees the same image.
- At most ``concurrency`` requests are in flight. Each attempt may take ``timeout`` seconds, and the client's own
  retries (exponential backoff on connection errors, timeouts, 408, 409, 429 and 5xx) are bounded by
  ``max_retries``. A dead, failing or hung server therefore costs each request a bounded time, and then the request
  becomes a ``backend_error`` row. The rest of the batch goes on.
- The score's log-probabilities come from ``logprobs``/``top_logprobs``. On a vLLM server (its ``/models`` says
  ``owned_by: vllm``, or ``server_extras=True``), three more things are used. ``logprob_token_ids`` asks for exactly
  the digit tokens and level words (the top 20 can miss one). ``continue_final_message`` continues the no-think
  answer prefix, and ``chat_template_kwargs`` switches a Qwen3.5 template's reasoning off for it (on otherwise). A
  template that opens ``<think>`` regardless (Qwen3-VL Thinking) gets it closed empty before the prefix, as
  ``chat_text`` does, so the server sees the other backends' prompt. A server that returns no log-probabilities
  leaves the score to the parsed text (``method="text"``).
- The key comes from ``$OPENAI_API_KEY`` (or the variable named by ``api_key_env``) and is never logged. The base
  URL comes from ``base_url``, else ``$OPENAI_BASE_URL``.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path

import openai

from ..backend import Backend, BackendError, Completion, Request
from ..scoring import READOUT_WORDS

log = logging.getLogger(__name__)

NO_PREFIX_ALLOWANCE = 16  # extra tokens when the server cannot continue the answer prefix and writes it itself
CLOSED_THINK = "<think>\n\n</think>\n\n"  # an empty reasoning block, as Qwen3 templates write it


def data_url(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def folder_pixel_budget(model: str) -> int | None:
    """The pixel budget of a local checkpoint's Qwen2-VL-style image processor, if there is one: in its
    ``preprocessor_config.json``, or in ``processor_config.json`` (where transformers 5 saves it)."""
    folder = Path(model)
    if (folder / "preprocessor_config.json").is_file():
        settings = json.loads((folder / "preprocessor_config.json").read_text())
    elif (folder / "processor_config.json").is_file():
        settings = json.loads((folder / "processor_config.json").read_text()).get("image_processor") or {}
    else:
        return None
    budget = settings.get("max_pixels") or (settings.get("size") or {}).get("longest_edge")
    return int(budget) if budget and "merge_size" in settings else None


class OpenAIBackend(Backend):
    name = "openai"

    def __init__(self, model: str, *, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 concurrency: int = 16, timeout: float = 120.0, max_retries: int = 3,
                 server_extras: bool | None = None, max_pixels: int | None = None):
        base_url = base_url or os.environ.get("OPENAI_BASE_URL")
        if not base_url:
            raise BackendError("the openai backend needs a server: pass --base-url URL (e.g. "
                               "http://127.0.0.1:8000/v1) or set OPENAI_BASE_URL")
        self.model, self.base_url = model, base_url
        self.concurrency = max(1, concurrency)
        self.max_pixels = max_pixels or folder_pixel_budget(model)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="qponder-openai", daemon=True)
        self._thread.start()
        self.client = None
        try:  # local servers need no key, but the client insists on one: a placeholder stands in
            self.client = self._run(self._client(os.environ.get(api_key_env) or "unused", timeout, max_retries))
            served = self._run(self._served_models())
            if served and model not in {m.id for m in served}:
                raise BackendError(f"{base_url} does not serve {model!r}; it serves: "
                                   f"{', '.join(m.id for m in served)} (pass one as --model)")
            owners = {getattr(m, "owned_by", None) for m in served or ()}
            self.server_extras = server_extras if server_extras is not None else "vllm" in owners
            self.readout_ids = self._run(self._readout_ids()) if self.server_extras else []
            self.think_closer = CLOSED_THINK if self.server_extras and self._run(self._opens_think()) else ""
        except BaseException:
            self.close()
            raise

    async def _client(self, api_key: str, timeout: float, max_retries: int) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.base_url, api_key=api_key, timeout=timeout, max_retries=max_retries)

    def _run(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    async def _served_models(self) -> list | None:
        """The served models, or None when the server does not list them (some do not)."""
        try:
            return [model async for model in self.client.models.list()]
        except openai.APIConnectionError as exc:
            raise BackendError(f"cannot reach {self.base_url}: {exc}") from exc
        except openai.APIStatusError as exc:
            if exc.status_code in (401, 403):
                raise BackendError(f"{self.base_url} refused the API key ({exc.status_code})") from exc
            return None

    def _url(self, path: str) -> str:
        """A vLLM endpoint served beside ``/v1`` (``/tokenize``, ``/detokenize``)."""
        return str(self.client.base_url).rstrip("/").removesuffix("/v1") + path

    async def _readout_ids(self) -> list[int]:
        """Ids of the single-token readout words (digits, level words; bare and after a space), from vLLM's
        ``/tokenize``."""
        async def tokenize(text: str) -> list[int]:
            answer = await self.client.post(self._url("/tokenize"), cast_to=object, body={
                "model": self.model, "prompt": text, "add_special_tokens": False})
            return answer["tokens"]

        try:
            found = await asyncio.gather(*(tokenize(space + word) for word in READOUT_WORDS for space in ("", " ")))
        except (openai.OpenAIError, KeyError, TypeError) as exc:
            log.warning("no exact digit log-probabilities (/tokenize failed: %s); using the top 20", exc)
            return []
        return sorted({tokens[0] for tokens in found if len(tokens) == 1})

    async def _opens_think(self) -> bool:
        """Whether the served template opens ``<think>`` even with reasoning off (vLLM's ``/tokenize`` renders it)."""
        try:
            rendered = await self.client.post(self._url("/tokenize"), cast_to=object, body={
                "model": self.model, "messages": [{"role": "user", "content": "Rate it."}],
                "add_generation_prompt": True, "chat_template_kwargs": {"enable_thinking": False}})
            text = await self.client.post(self._url("/detokenize"), cast_to=object, body={
                "model": self.model, "tokens": rendered["tokens"]})
            return text["prompt"].rstrip().endswith("<think>")
        except (openai.OpenAIError, KeyError, TypeError) as exc:
            log.warning("cannot render the chat template (%s): a no-think prompt is sent as it is", exc)
            return False

    def generate(self, requests: Sequence[Request], *, max_new_tokens: int, n: int = 1,
                 temperature: float = 1.0) -> list[list[Completion] | BaseException]:
        if self.client is None:
            raise BackendError("this backend is closed")
        return self._run(self._generate(requests, max_new_tokens, n, temperature))

    async def _generate(self, requests, max_new_tokens, n, temperature) -> list[list[Completion] | BaseException]:
        gate = asyncio.Semaphore(self.concurrency)

        async def one(request: Request) -> list[Completion]:
            async with gate:
                return await self._complete(request, max_new_tokens, n, temperature)

        return await asyncio.gather(*(one(r) for r in requests), return_exceptions=True)

    async def _complete(self, request: Request, max_new_tokens: int, n: int, temperature: float) -> list[Completion]:
        messages = [{"role": "system", "content": request.system}] if request.system else []
        messages.append({"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": data_url(request.image)}},
            {"type": "text", "text": request.prompt}]})
        extra: dict = {}
        continues = bool(request.prefix) and self.server_extras
        if continues:
            messages.append({"role": "assistant", "content": self.think_closer + request.prefix})
            extra.update(add_generation_prompt=False, continue_final_message=True)
        if self.server_extras:  # reasoning on or off as in the other backends' chat_text (Qwen3.5 templates)
            extra["chat_template_kwargs"] = {"enable_thinking": not request.prefix}
        if self.readout_ids:
            extra["logprob_token_ids"] = self.readout_ids
        budget = max_new_tokens + (NO_PREFIX_ALLOWANCE if request.prefix and not continues else 0)
        response = await self.client.chat.completions.create(
            model=self.model, messages=messages, max_tokens=budget, n=n,
            temperature=temperature if n > 1 else 0.0, logprobs=True, top_logprobs=20, extra_body=extra or None)
        if not response.choices:
            raise BackendError("the server answered with no choices")
        prefix = "" if continues else request.prefix
        return [completion_from_choice(choice, prefix) for choice in response.choices]

    def close(self) -> None:
        if self.client is not None:
            self._run(self.client.close())
            self.client = None
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()


def completion_from_choice(choice, prefix: str = "") -> Completion:
    """A :class:`Completion` from one chat choice. When the server wrote ``prefix`` itself (it could not continue
    it), the prefix and its tokens are cut, so the text starts where a continuation would."""
    text = choice.message.content or ""
    content = (choice.logprobs.content if choice.logprobs else None) or []
    pieces = [item.token for item in content]
    logprobs = [{**{top.token: top.logprob for top in item.top_logprobs or ()}, item.token: item.logprob}
                for item in content]
    raw = [bytes(item.bytes) if item.bytes is not None else item.token.encode() for item in content]
    finish = "length" if choice.finish_reason == "length" else "stop"
    completion = Completion.from_pieces(text, pieces, logprobs, finish,
                                        lambda i: b"".join(raw[:i]).decode("utf-8", errors="ignore"))
    if not (prefix and text.startswith(prefix)):
        return completion
    cut = len(prefix)
    steps = [type(s)(s.text, s.offset - cut, s.logprobs) for s in completion.steps if s.offset >= cut]
    return Completion(text[cut:], steps, finish)

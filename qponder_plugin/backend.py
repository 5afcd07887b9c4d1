"""The backend interface: what every inference engine implements, and the types it exchanges with the core.

Engines register through the ``register_backends`` hook (the built-in ones in ``default_plugins``); the live
registry is :mod:`qponder_plugin.registry`.
"""

from __future__ import annotations

import importlib
import importlib.util
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from PIL import Image


class BackendError(RuntimeError):
    """The engine failed (could not load a model, ran out of memory, lost its server)."""


@dataclass(frozen=True)
class TokenStep:
    """One generated token: its text, its character offset in the completion, and log-probs of alternatives."""

    text: str
    offset: int
    logprobs: Mapping[str, float]


@dataclass(frozen=True)
class Request:
    """One image to score: the user prompt, an optional system prompt, and the assistant-turn prefix to continue
    (``image=None``: a text-only prompt, for ``chat_text``)."""

    image: Image.Image | None
    prompt: str
    system: str | None = None
    prefix: str = ""


@dataclass(frozen=True)
class Completion:
    """One generated answer (without the prefix), token by token, and why generation stopped."""

    text: str
    steps: Sequence[TokenStep]
    finish_reason: str  # "stop" | "length"

    @classmethod
    def from_pieces(cls, text: str, pieces: Sequence[str], logprobs: Sequence[Mapping[str, float]],
                    finish_reason: str, decode_prefix: Callable[[int], str] | None = None) -> Completion:
        """Build steps from per-token strings; ``decode_prefix(i)`` gives exact offsets when pieces split
        multi-byte characters (then ``"".join(pieces) != text``)."""
        offsets, position = [], 0
        exact = "".join(pieces) == text
        for index, piece in enumerate(pieces):
            offsets.append(position if exact or decode_prefix is None else len(decode_prefix(index)))
            position += len(piece)
        return cls(text, [TokenStep(p, o, lp) for p, o, lp in zip(pieces, offsets, logprobs)], finish_reason)


class Backend(ABC):
    """A batched engine. ``generate`` returns, per request, either its ``n`` completions or the exception that
    request alone raised; an exception escaping ``generate`` means the whole batch failed."""

    name: str = "backend"
    max_pixels: int | None = None  # the engine's own image budget: the core loader never hands it more pixels

    @abstractmethod
    def generate(self, requests: Sequence[Request], *, max_new_tokens: int, n: int = 1,
                 temperature: float = 1.0) -> list[list[Completion] | BaseException]:
        """Greedy decoding when ``n == 1``; ``n`` samples at ``temperature`` otherwise."""

    def close(self) -> None:
        """Release the model and its memory."""


def lazy(target: str, *, requires: Sequence[str] = (), extra: str | None = None) -> Callable[..., Backend]:
    """A factory that imports ``module:Class`` only when the backend is first used (keeps the core light).

    ``requires`` names the modules the engine imports and ``extra`` the package extra that installs them: a missing
    one is a :class:`BackendError` that says what to install, and ``qponder models`` lists what is missing.
    """

    def factory(*args, **kwargs) -> Backend:
        if missing := missing_modules(factory):
            hint = f"pip install 'qponder-plugin[{extra}]'" if extra else "install " + ", ".join(missing)
            raise BackendError(f"{', '.join(missing)} not installed: {hint}")
        module, _, attr = target.partition(":")
        return getattr(importlib.import_module(module), attr)(*args, **kwargs)

    factory.target, factory.requires, factory.extra = target, tuple(requires), extra
    return factory


def missing_modules(factory: Callable[..., Backend]) -> list[str]:
    """The modules a backend factory declares in ``requires`` that are not installed."""
    return [name for name in getattr(factory, "requires", ()) if importlib.util.find_spec(name) is None]

"""The profile interface: how to prompt a model family and how to read its answer.

A profile holds the prompts for think and no-think modes, the answer parser, the native score range (mapped
onto 1–5), and the assistant-turn prefix after which the score's first digit is the next token (used by the
no-think probability mode). Profiles register through the ``register_profiles`` hook (the built-in ones in
``default_plugins``); the live registry is :mod:`qponder_plugin.registry`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from .parsing import ParsedAnswer, parse_answer


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    think_prompt: str
    nothink_prompt: str
    answer_prefix: str = "<answer>"
    score_range: tuple[float, float] = (1.0, 5.0)
    system_prompt: str | None = None
    match: tuple[str, ...] = ()  # case-insensitive substrings of a model id that select this profile
    checkpoints: Mapping[str, str] = field(default_factory=dict)  # alias -> hub id of public weights
    parse: Callable[[str], ParsedAnswer] = parse_answer

    def prompt(self, think: bool) -> str:
        return self.think_prompt if think else self.nothink_prompt

    def to_scale(self, value: float) -> tuple[float, bool]:
        """Map a native score onto 1–5; out-of-range values are clamped and flagged."""
        low, high = self.score_range
        clamped = min(max(value, low), high)
        return 1.0 + 4.0 * (clamped - low) / (high - low), clamped != value

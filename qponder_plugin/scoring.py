"""Reading a deterministic score from the model's token probabilities.

The score is an expected value, not a sampled string. At the answer, the model's next-token distribution over
the digits of the scale (1–5) gives ``E[first digit] = Σ p(d)·d``; the distribution over the tenths digit
(0–9) at the position after the decimal point refines it by ``E[tenths]/10``. The tenths distribution is read
on the greedy path (after the most likely first digit), i.e. we assume the fraction does not depend on the
first digit; the result is clamped to the scale. For an integer answer (``<answer>4</answer>``) only the first
term applies. A greedy answer ``3.72`` whose first digit carries p=0.8 and ``4`` p=0.2 thus scores about 3.9,
and two images the greedy text ties at ``4`` are still ranked by the model's confidence.

This needs one token per digit, which holds for Qwen-family tokenizers (digits are split individually) and for
our own. When the digits are not tokens of their own, or a backend gives no log-probabilities, the caller falls
back to the parsed text score.

A Q-Align level answer (``The quality of the image is good``) is read the same way, as Q-Align itself reads it:
the expected level over the five level words' probabilities at the word (bad=1 … excellent=5). Backends record
the log-probabilities of every :data:`READOUT_WORDS` token at each step.
"""

from __future__ import annotations

import math
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .backend import Completion, TokenStep
from .parsing import LEVELS
from .profile import Profile

LEVEL_VALUES = {word: float(index + 1) for index, word in enumerate(LEVELS)}
READOUT_WORDS = (*string.digits, *LEVELS)  # the tokens whose log-probabilities backends record at each step


def distribution(logprobs: Mapping[str, float], values: Mapping[str, float]) -> dict[float, float] | None:
    """Probabilities at one step of the tokens that ``values`` names (spaces aside), by the value each stands for,
    renormalised over them (None if none is present)."""
    mass: dict[float, float] = {}
    for token, logprob in logprobs.items():
        value = values.get(token.strip())
        if value is not None:
            mass[value] = mass.get(value, 0.0) + math.exp(logprob)
    total = sum(mass.values())
    return {v: p / total for v, p in mass.items()} if total > 0 else None


def digit_distribution(logprobs: Mapping[str, float], digits: Sequence[int]) -> dict[int, float] | None:
    """Probabilities of ``digits`` at one step, renormalised over those digits (None if none is present)."""
    return distribution(logprobs, {str(d): d for d in digits})


def expected_level(steps: Sequence[TokenStep], text: str, start: int) -> float | None:
    """Expected level (1–5) for the level word at ``text[start:]``, or None if the probabilities cannot be read."""
    step = _step_at(steps, start)
    word = step.text.strip() if step is not None else None
    if word not in LEVEL_VALUES or not text.startswith(word, start):
        return None
    levels = distribution(step.logprobs, LEVEL_VALUES)
    if levels is None or len(levels) < len(LEVEL_VALUES):  # a level word that is no single token: read the text
        return None
    return sum(v * p for v, p in levels.items())


def expected_score(steps: Sequence[TokenStep], text: str, start: int, low: float, high: float) -> float | None:
    """Expected score for the number (or level word) at ``text[start:]``, or None if the probabilities cannot be
    read."""
    if text[start:start + 1].isalpha():
        return expected_level(steps, text, start)
    if high >= 10 or low < 0:
        return None  # multi-digit scales are not read digit by digit
    first = _step_at(steps, start)
    if first is None or first.text.strip() != text[start]:
        return None
    firsts = digit_distribution(first.logprobs, range(math.floor(low), math.floor(high) + 1))
    if firsts is None:
        return None
    score = sum(d * p for d, p in firsts.items())
    if text[start + 1:start + 2] == "." and text[start + 2:start + 3].isdigit():
        tenth = _step_at(steps, start + 2)
        tenths = digit_distribution(tenth.logprobs, range(10)) if tenth is not None else None
        if tenths is not None and tenth.text.strip() == text[start + 2]:
            score += sum(d * p for d, p in tenths.items()) / 10
    return min(max(score, low), high)


def _step_at(steps: Sequence[TokenStep], offset: int) -> TokenStep | None:
    """The step whose token's first non-space character sits at ``offset``."""
    for step in steps:
        lead = len(step.text) - len(step.text.lstrip())
        if step.offset + lead == offset and step.text.strip():
            return step
        if step.offset > offset:
            break
    return None


@dataclass(frozen=True)
class Reading:
    """What one completion says: its score on 1–5 (probability-read when possible) or why it has none."""

    raw: str
    reasoning: str | None
    finish_reason: str | None
    score: float | None = None
    text_score: float | None = None
    clamped: bool = False
    method: str | None = None
    error: str | None = None


def read_completion(profile: Profile, completion: Completion, prefix: str = "") -> Reading:
    """Parse ``prefix + completion.text`` with ``profile`` and read its score (see the module docstring)."""
    raw = prefix + completion.text
    parsed = profile.parse(raw)
    if parsed.value is None:
        error = parsed.error
        if completion.finish_reason == "length":
            error = f"output stopped at the max_new_tokens budget before a complete answer ({error}); raise it"
        return Reading(raw, parsed.reasoning, completion.finish_reason, error=error)
    text_score, clamped = profile.to_scale(parsed.value)
    steps = [TokenStep(s.text, s.offset + len(prefix), s.logprobs) for s in completion.steps]
    native = expected_score(steps, raw, parsed.start, *profile.score_range)
    score = profile.to_scale(native)[0] if native is not None else text_score
    return Reading(raw, parsed.reasoning, completion.finish_reason, round(score, 4), round(text_score, 4), clamped,
                   "probability" if native is not None else "text")

"""Reading the score and the reasoning out of a model's raw text. It never guesses a score."""

from __future__ import annotations

import re
from dataclasses import dataclass

_NUMBER = r"[-+]?\d+(?:\.\d+)?"
# An answer runs to its closing tag, the next <answer> (a model that reopens the tag restates its answer) or the end.
_ANSWER = re.compile(r"<answer>(.*?)(?:</answer>|(?=<answer>)|\Z)", re.S | re.I)
_THINK = re.compile(r"<think>(.*?)(?:</think>|(?=<answer>)|\Z)", re.S | re.I)
_KEYED = re.compile(rf"""["']?\b(?:score|rating|quality(?:\s+score)?)\b["']?\s*[:=]\s*["']?({_NUMBER})""", re.I)
_NUMBER_RE = re.compile(_NUMBER)
_SCALE_SUFFIX = re.compile(r"(?:/\s*|\bout\s+of\s+)\d+(?:\.\d+)?", re.I)


@dataclass(frozen=True)
class ParsedAnswer:
    """A parsed model output. ``start`` is the offset in the raw text where the number begins."""

    value: float | None
    start: int | None
    reasoning: str | None
    error: str | None = None


def parse_answer(text: str) -> ParsedAnswer:
    """Parse ``<think>…</think><answer>x</answer>`` and its common variants.

    The last ``<answer>`` wins. Inside it we accept a bare number (``3.72``, ``4/5``, ``4 out of 5``), JSON
    (``{"rating": 3.7}``) or a keyed form (``Score: 3.7``). Without answer tags, only an explicit
    ``score:``/``rating:`` counts; a stray number in the reasoning never becomes a score.
    """
    reasoning = _reasoning(text)
    answers = list(_ANSWER.finditer(text))
    if answers:
        body, offset = answers[-1].group(1), answers[-1].start(1)
        keyed = list(_KEYED.finditer(body))
        if keyed:
            return ParsedAnswer(float(keyed[-1].group(1)), offset + keyed[-1].start(1), reasoning)
        numbers = list(_NUMBER_RE.finditer(_SCALE_SUFFIX.sub(lambda m: " " * len(m.group()), body)))
        if len(numbers) == 1:
            return ParsedAnswer(float(numbers[0].group()), offset + numbers[0].start(), reasoning)
        problem = "holds no number" if not numbers else f"holds {len(numbers)} numbers, not one score"
        return ParsedAnswer(None, None, reasoning, f"the <answer> {problem}: {body.strip()[:80]!r}")
    keyed = list(_KEYED.finditer(text))
    if keyed:
        return ParsedAnswer(float(keyed[-1].group(1)), keyed[-1].start(1), reasoning)
    return ParsedAnswer(None, None, reasoning, "no <answer> tag and no 'score: x' in the output")


def _reasoning(text: str) -> str | None:
    thoughts = _THINK.findall(text)
    if thoughts:
        return thoughts[-1].strip() or None
    before = _ANSWER.split(text, maxsplit=1)[0].strip()
    return before or None

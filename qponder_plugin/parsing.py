"""Reading the score and the reasoning out of a model's raw text. It never guesses a score."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from functools import lru_cache

_NUMBER = r"[-+]?\d+(?:\.\d+)?"
_THINK = re.compile(r"<think(?:ing)?>(.*?)(?:</think(?:ing)?>|(?=<answer>)|\Z)", re.S | re.I)
_THINK_END = re.compile(r"</think(?:ing)?>", re.I)
_KEYED = re.compile(rf"""["']?\b(?:score|rating|quality(?:\s+score)?)\b["']?\s*[:=]\s*["']?({_NUMBER})""", re.I)
_NUMBER_RE = re.compile(_NUMBER)
_SCALE_SUFFIX = re.compile(r"(?:/\s*|\bout\s+of\s+)\d+(?:\.\d+)?", re.I)
LEVELS = ("bad", "poor", "fair", "good", "excellent")  # Q-Align's quality words, worst first: 1 to 5
_LEVEL = re.compile(rf"\bis\s+({'|'.join(LEVELS)})\b", re.I)


@dataclass(frozen=True)
class ParsedAnswer:
    """A parsed model output. ``start`` is the offset in the raw text where the number begins."""

    value: float | None
    start: int | None
    reasoning: str | None
    error: str | None = None


@lru_cache
def _answer_re(open_tag: str, close_tag: str) -> re.Pattern:
    """An answer runs to its closing tag, the next opening tag (a model that reopens it restates its answer) or the
    end."""
    opening, closing = re.escape(open_tag), re.escape(close_tag)
    return re.compile(rf"{opening}(.*?)(?:{closing}|(?={opening})|\Z)", re.S | re.I)


def parse_answer(text: str, tags: tuple[str, str] = ("<answer>", "</answer>")) -> ParsedAnswer:
    """Parse ``<think>…</think><answer>x</answer>`` and its common variants.

    The last answer wins. Inside it we accept a bare number (``3.72``, ``4/5``, ``4 out of 5``), JSON
    (``{"rating": 3.7}``) or a keyed form (``Score: 3.7``). Without answer tags, only an explicit
    ``score:``/``rating:`` counts; a stray number in the reasoning never becomes a score. ``tags`` are the answer's
    opening and closing tags (IQA-T1 writes ``<answer_start>…<answer_end>``, EvoQuality ``\\boxed{…}``).
    """
    answer = _answer_re(*tags)
    reasoning = _reasoning(text, answer)
    answers = list(answer.finditer(text))
    if answers:
        body, offset = answers[-1].group(1), answers[-1].start(1)
        keyed = list(_KEYED.finditer(body))
        if keyed:
            return ParsedAnswer(float(keyed[-1].group(1)), offset + keyed[-1].start(1), reasoning)
        numbers = list(_NUMBER_RE.finditer(_SCALE_SUFFIX.sub(lambda m: " " * len(m.group()), body)))
        if len(numbers) == 1:
            return ParsedAnswer(float(numbers[0].group()), offset + numbers[0].start(), reasoning)
        problem = "holds no number" if not numbers else f"holds {len(numbers)} numbers, not one score"
        return ParsedAnswer(None, None, reasoning, f"the {tags[0]} {problem}: {body.strip()[:80]!r}")
    keyed = list(_KEYED.finditer(text))
    if keyed:
        return ParsedAnswer(float(keyed[-1].group(1)), keyed[-1].start(1), reasoning)
    return ParsedAnswer(None, None, reasoning, f"no {tags[0]} tag and no 'score: x' in the output")


def parse_json_answer(text: str) -> ParsedAnswer:
    """A JSON object such as MR-IQA-2's ``{"reasoning": {"evidence": …, "solution": …}, "rating": "3.25"}``: its last
    ``rating`` (or ``score``) is the score, and its ``reasoning`` (``reasons``, ``reason``) fields the reasoning."""
    return replace(parse_answer(text), reasoning=_json_reasoning(text) or _thoughts(text))


def parse_level_answer(text: str) -> ParsedAnswer:
    """A Q-Align level sentence (``The quality of the image is good.``): bad, poor, fair, good, excellent read as
    1–5. The last level word after ``is`` wins."""
    words = list(_LEVEL.finditer(text))
    if not words:
        return ParsedAnswer(None, None, _thoughts(text), f"no quality level ({', '.join(LEVELS)}) in the output")
    level = words[-1]
    return ParsedAnswer(float(LEVELS.index(level.group(1).lower()) + 1), level.start(1), _thoughts(text))


def _thoughts(text: str) -> str | None:
    """The last ``<think>`` block, or everything before ``</think>`` when the chat template opened it (Qwen3-VL
    Thinking, Qwen3.5)."""
    thoughts = _THINK.findall(text)
    closed = _THINK_END.search(text)
    thought = thoughts[-1] if thoughts else text[:closed.start()] if closed else ""
    return thought.strip() or None


def _reasoning(text: str, answer: re.Pattern) -> str | None:
    if _THINK.search(text) or _THINK_END.search(text):
        return _thoughts(text)
    return answer.split(text, maxsplit=1)[0].strip() or None


def _json_reasoning(text: str) -> str | None:
    closed = _THINK_END.search(text)
    body = text[closed.end():] if closed else text
    try:
        payload, _ = json.JSONDecoder().raw_decode(body[body.index("{"):])
    except ValueError:  # no object, or one cut short
        return None
    found = next((payload[key] for key in ("reasoning", "reasons", "reason") if key in payload), None)
    if isinstance(found, dict):
        found = " ".join(str(part).strip() for part in found.values())
    return None if found is None else str(found).strip() or None

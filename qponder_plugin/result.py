"""The one result type: :class:`Assessment`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

Status = Literal["ok", "parse_error", "image_error", "backend_error"]
Mode = Literal["think", "no-think"]
SCHEMA_VERSION = 1


def reading_mode(think: bool) -> Mode:
    """The name of a reading's mode: ``"think"`` (reasoning, then the score) or ``"no-think"`` (the score alone)."""
    return "think" if think else "no-think"


@dataclass
class Assessment:
    """The quality verdict for one image.

    ``score`` is on the 1–5 scale and ``normalized`` on 0–1. A failure is a ``status`` other than ``"ok"`` with an
    ``error`` message, and ``score`` is then ``None``: no score is ever made up. ``method`` says how the score was
    read: ``"probability"`` (expected value over the answer's digit tokens), ``"text"`` (parsed from the answer),
    or ``"sampling"`` (mean over ``n`` samples, with ``score_std``).
    """

    score: float | None = None
    normalized: float | None = None
    text_score: float | None = None
    score_std: float | None = None
    reasoning: str | None = None
    raw: str | None = None
    status: Status = "ok"
    error: str | None = None
    source: str | None = None
    model: str | None = None
    profile: str | None = None
    backend: str | None = None
    mode: Mode = "think"
    method: Literal["probability", "text", "sampling"] | None = None
    samples: list[float] = field(default_factory=list)
    clamped: bool = False
    finish_reason: str | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict:
        """A JSON-ready dict with a stable schema: always the same keys, in the same order."""
        return {"schema_version": SCHEMA_VERSION, **asdict(self)}

    def __repr__(self) -> str:
        where = f" {self.source}" if self.source else ""
        if not self.ok:
            return f"<Assessment{where} {self.status}: {self.error}>"
        spread = f" ± {self.score_std:.2f}" if self.score_std is not None else ""
        gist = ""
        if self.reasoning:
            text = " ".join(self.reasoning.split())
            gist = f" — {text[:77]}…" if len(text) > 80 else f" — {text}"
        return f"<Assessment{where} {self.score:.2f}/5{spread} ({self.method}){gist}>"

    def _repr_html_(self) -> str:
        from html import escape

        if not self.ok:
            return f"<b>{escape(self.status)}</b>: {escape(self.error or '')}"
        reasoning = escape(self.reasoning or "")
        return (f"<div><b>{self.score:.2f}</b> / 5 <small>({escape(self.method or '')}, {escape(self.model or '')})"
                f"</small><br><small>{reasoning}</small></div>")

"""Cold-start distillation: a teacher writes reasoning for images whose human MOS it is told.

Any core backend can teach (in production a 72B Qwen2.5-VL behind an OpenAI-compatible server; offline any local
model). The teacher's answer must land within ``tolerance`` of the MOS or the sample is dropped (and counted).
Kept samples are written as ``<think>teacher reasoning</think><answer>MOS</answer>``: the reasoning is the
teacher's, the label stays the human one. Output is JSON lines, appended and flushed as it goes, so a killed run
resumes where it stopped; rejected samples go to ``<out>.rejected.jsonl`` for inspection and are not retried,
while failures (an unreadable image, a teacher error such as a server going away) are retried by the next run.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from qponder_plugin.backend import Request
from qponder_plugin.default_plugins.profiles import QPONDER
from qponder_plugin.images import DEFAULT_MAX_PIXELS, ImageError, load_image
from qponder_plugin.registry import create_backend

TEACHER_PROMPT = (
    "You are an expert in image quality assessment. Human observers rated this image's overall visual quality "
    "{mos:.2f} on a scale from 1 (very poor) to 5 (excellent). Examine the image and explain that rating from what "
    "you see: sharpness and focus, noise, exposure, colour, compression or other artifacts, composition, content, "
    "and, for AI-generated images, generation flaws (malformed anatomy or objects, garbled text, unnatural "
    "textures). Write the reasoning inside <think> </think> tags as an assessment of the image, without mentioning "
    "that you were told the rating, then give the score with two decimals inside <answer> </answer> tags.")


class BackendTeacher:
    """A teacher on any registered core backend (``transformers``, ``openai``, ...)."""

    def __init__(self, model: str, *, backend: str = "transformers", max_new_tokens: int = 512,
                 prompt: str = TEACHER_PROMPT, **options):
        if "{mos" not in prompt:
            raise ValueError("the teacher prompt must contain a {mos} (or {mos:.2f}) placeholder")
        self.backend = create_backend(backend, model, **options)
        self.max_new_tokens, self.prompt = max_new_tokens, prompt

    def explain(self, images: Sequence, moses: Sequence[float]) -> list:
        requests = [Request(image, self.prompt.format(mos=mos)) for image, mos in zip(images, moses)]
        results = self.backend.generate(requests, max_new_tokens=self.max_new_tokens)
        return [r if isinstance(r, BaseException) else r[0].text for r in results]

    def close(self) -> None:
        self.backend.close()


@dataclass
class DistillStats:
    kept: int = 0
    dropped: int = 0  # teacher disagreed with the MOS beyond the tolerance, or its answer did not parse
    failed: int = 0  # the image could not be read, or the teacher raised
    resumed: int = 0  # already in the output from an earlier run
    reasons: dict[str, int] = field(default_factory=dict)

    def count(self, outcome: str, reason: str | None = None) -> None:
        setattr(self, outcome, getattr(self, outcome) + 1)
        if reason:
            self.reasons[reason] = self.reasons.get(reason, 0) + 1


def _done(*paths: Path) -> set[str]:
    seen = set()
    for path in paths:
        if path.is_file():
            with path.open(encoding="utf-8") as lines:
                seen.update(json.loads(line)["image"] for line in lines if line.strip())
    return seen


def judge(text: str, mos: float, tolerance: float) -> tuple[str | None, str | None]:
    """``(completion, None)`` for a usable teacher answer, else ``(None, reason)``."""
    parsed = QPONDER.parse(text)
    if parsed.value is None or not parsed.reasoning:
        return None, "unparseable"
    score = QPONDER.to_scale(parsed.value)[0]
    if abs(score - mos) > tolerance:
        return None, "disagrees with MOS"
    return f"<think>{parsed.reasoning}</think><answer>{mos:.2f}</answer>", None


def distill(teacher, records: Iterable, out: str | Path, *, tolerance: float = 0.5, batch_size: int = 8,
            workers: int = 1, max_pixels: int | None = DEFAULT_MAX_PIXELS, limit: int | None = None) -> DistillStats:
    """Run ``teacher`` over ``records`` (objects with ``.image`` and ``.mos`` on 1–5) into JSONL at ``out``.

    ``workers > 1`` sends batches concurrently (for server teachers); writes stay in one thread.
    """
    out = Path(out)
    rejected = out.with_suffix(".rejected.jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    stats = DistillStats()
    done = _done(out, rejected)
    todo = []
    for record in records:
        if str(record.image) in done:
            stats.resumed += 1
        else:
            todo.append(record)
    todo = todo[:limit] if limit is not None else todo
    batches = [todo[i:i + batch_size] for i in range(0, len(todo), batch_size)]

    def run(batch):
        images, usable, failures = [], [], []
        for record in batch:
            try:
                images.append(load_image(record.image, max_pixels=max_pixels))
                usable.append(record)
            except ImageError as exc:
                failures.append((record, str(exc)))
        try:
            texts = teacher.explain(images, [r.mos for r in usable]) if usable else []
        except Exception as exc:  # the whole request failed (server down): count every item, keep going
            texts = [exc] * len(usable)
        return list(zip(usable, texts)), failures

    with out.open("a", encoding="utf-8") as kept, rejected.open("a", encoding="utf-8") as dropped, \
            ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for results, failures in pool.map(run, batches):
            for _ in failures:
                stats.count("failed", "image error")
            for record, text in results:
                row = {"image": str(record.image), "mos": record.mos}
                if isinstance(text, BaseException):
                    stats.count("failed", f"teacher error: {type(text).__name__}")
                    continue
                completion, reason = judge(text, record.mos, tolerance)
                if completion is None:
                    stats.count("dropped", reason)
                    dropped.write(json.dumps({**row, "teacher": text, "reason": reason}, ensure_ascii=False) + "\n")
                else:
                    stats.count("kept")
                    kept.write(json.dumps({**row, "completion": completion, "teacher": text},
                                          ensure_ascii=False) + "\n")
            kept.flush()
            dropped.flush()
    return stats


def read_distilled(path: str | Path) -> list[dict]:
    """The kept samples of a distillation run (``image``, ``mos``, ``completion``)."""
    with Path(path).open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]

"""The reusable :class:`Scorer`: one loaded model, a profile, and the batch loop that never lets one bad item
fail the rest."""

from __future__ import annotations

import logging
import os
import statistics
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from .backend import Backend, BackendError, Completion, Request
from .images import DEFAULT_MAX_PIXELS, ImageError, ImageSource, describe, expand, load_image
from .plugins import notify_assessed
from .profile import Profile
from .registry import create_backend
from .result import Assessment, reading_mode
from .scoring import read_completion
from .spec import ModelSpec

log = logging.getLogger(__name__)

DEFAULT_BACKEND = "transformers"


class Scorer:
    """A loaded model that scores images; reuse it, and close it (or use ``with``) to free the model.

    >>> with load_scorer("TianheWu/VisualQuality-R1-7B") as scorer:   # doctest: +SKIP
    ...     print(scorer.assess("photo.jpg").score)
    """

    def __init__(self, model: str | os.PathLike | ModelSpec | None = None, *, backend: str | None = None,
                 profile: str | Profile | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 batch_size: int = 8, max_new_tokens: int = 512, **backend_options):
        self.spec = ModelSpec.resolve(model, profile=profile)
        self.model_id, self.profile = self.spec.checkpoint, self.spec.profile
        self.backend_name = backend or DEFAULT_BACKEND
        self.batch_size, self.max_new_tokens = max(1, batch_size), max_new_tokens
        self.backend: Backend | None = create_backend(self.backend_name, self.model_id, **backend_options)
        budgets = [b for b in (max_pixels, self.backend.max_pixels) if b]
        self.max_pixels = min(budgets) if budgets else None  # shrink early (JPEG draft), not in the processor

    def __enter__(self) -> Scorer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()
            self.backend = None

    def __repr__(self) -> str:
        return f"Scorer(model={self.model_id!r}, profile={self.profile.name!r}, backend={self.backend_name!r})"

    def assess(self, image: ImageSource, **options) -> Assessment:
        return self.assess_batch([image], **options)[0]

    def assess_batch(self, images: ImageSource | Iterable[ImageSource], **options) -> list[Assessment]:
        return list(self.iter_assess(images, **options))

    def iter_assess(self, images: ImageSource | Iterable[ImageSource], *, think: bool = True, n: int = 1,
                    temperature: float = 1.0) -> Iterator[Assessment]:
        """Yield one :class:`Assessment` per input, in input order, as soon as its window is scored.

        Inputs are read in windows of a few batches; within a window, images of similar size are batched
        together (less padding), and loading runs in threads while nothing else is waiting on it.
        """
        if self.backend is None:
            raise BackendError("this scorer is closed")
        items = expand(images)
        window = self.batch_size * 4
        load = partial(self._load, mode=reading_mode(think))
        with ThreadPoolExecutor(max_workers=min(4, window)) as pool:
            for begin in range(0, len(items), window):
                chunk = items[begin:begin + window]
                loaded = list(pool.map(load, chunk))
                yield from self._score_window(loaded, think=think, n=n, temperature=temperature)

    def _load(self, source: ImageSource, mode: str) -> tuple[Assessment, object]:
        started = time.perf_counter()
        base = Assessment(source=describe(source), model=self.model_id, profile=self.profile.name,
                          backend=self.backend_name, mode=mode)
        try:
            image = load_image(source, max_pixels=self.max_pixels)
        except ImageError as exc:
            base.status, base.error, image = "image_error", str(exc), None
        base.timings["load_ms"] = round((time.perf_counter() - started) * 1000, 2)
        return base, image

    def _score_window(self, loaded: list[tuple[Assessment, object]], **options) -> Iterator[Assessment]:
        order = sorted((i for i, (_, image) in enumerate(loaded) if image is not None),
                       key=lambda i: loaded[i][1].width * loaded[i][1].height)
        for begin in range(0, len(order), self.batch_size):
            batch = order[begin:begin + self.batch_size]
            self._score_batch([loaded[i] for i in batch], **options)
        for assessment, _ in loaded:
            notify_assessed(assessment)
            yield assessment

    def _score_batch(self, batch: list[tuple[Assessment, object]], *, think: bool, n: int,
                     temperature: float) -> None:
        prompt, prefix = self.profile.prompt(think), "" if think else self.profile.answer_prefix
        requests = [Request(image, prompt, self.profile.system_prompt, prefix) for _, image in batch]
        started = time.perf_counter()
        try:
            results = self.backend.generate(requests, max_new_tokens=self._budget(think), n=n,
                                            temperature=temperature)
        except Exception as exc:  # the whole batch failed: retry one by one so a single bad item stays alone
            if len(requests) == 1:
                results = [exc]
            else:
                log.warning("batch of %d failed (%s); retrying items one by one", len(requests), exc)
                for item in batch:
                    self._score_batch([item], think=think, n=n, temperature=temperature)
                return
        per_item_ms = round((time.perf_counter() - started) * 1000 / len(batch), 2)
        for (assessment, _), result in zip(batch, results):
            assessment.timings["infer_ms"] = per_item_ms
            if isinstance(result, BaseException):
                assessment.status, assessment.error = "backend_error", f"{type(result).__name__}: {result}"
            else:
                self._read(assessment, result, prefix)

    def _budget(self, think: bool) -> int:
        # No-think: one prefill pass, then the first digit, the point and the tenths digit: all the score reads.
        return self.max_new_tokens if think else min(self.max_new_tokens, 3)

    def _read(self, assessment: Assessment, completions: Sequence[Completion], prefix: str) -> None:
        """Fill ``assessment`` from one or more completions of the same request."""
        readings = [read_completion(self.profile, c, prefix) for c in completions]
        good = [r for r in readings if r.error is None]
        first = good[0] if good else readings[0]
        assessment.raw, assessment.reasoning, assessment.finish_reason = first.raw, first.reasoning, first.finish_reason
        if not good:
            assessment.status, assessment.error = "parse_error", first.error
            return
        if len(completions) == 1:
            assessment.score, assessment.method = first.score, first.method
            assessment.text_score, assessment.clamped = first.text_score, first.clamped
        else:
            assessment.samples = [r.score for r in good]
            assessment.score = statistics.fmean(assessment.samples)
            assessment.score_std = statistics.pstdev(assessment.samples)
            assessment.text_score = statistics.fmean(r.text_score for r in good)
            assessment.clamped, assessment.method = any(r.clamped for r in good), "sampling"
            if len(good) < len(readings):
                assessment.error = f"{len(readings) - len(good)} of {len(readings)} samples did not parse"
        assessment.normalized = round((assessment.score - 1.0) / 4.0, 4)


def load_scorer(model: str | os.PathLike | ModelSpec | None = None, *, backend: str | None = None, **options) -> Scorer:
    """Load ``model`` once and return a reusable :class:`Scorer` (a context manager that frees the model)."""
    return Scorer(model, backend=backend, **options)

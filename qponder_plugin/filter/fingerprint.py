"""The key of everything that changes a score: two runs share stored readings only when their keys are equal.

The key covers the model (:class:`~qponder_plugin.spec.ModelSpec`: its checkpoint and a hash of its weight files, or
its hub revision), the backend, the profile's name and a hash of its prompts, the pixel budget and
:data:`READING_VERSION`. Nothing here loads a model.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from typing import Any

from ..result import SCHEMA_VERSION
from ..scorer import DEFAULT_BACKEND
from ..spec import ModelSpec, file_digest, weights_fingerprint

READING_VERSION = 1  # bump when the way a score is read from an answer changes
# Backend settings that change where or how fast a score is computed, never the score itself.
TRANSPORT = frozenset({"base_url", "api_key_env", "concurrency", "timeout", "max_retries", "device",
                       "gpu_memory_utilization", "tensor_parallel_size", "enforce_eager", "max_model_len"})


def scoring_config(model: str | ModelSpec | None = None, *, backend: str | None = None, profile: str | None = None,
                   max_pixels: int | None = None, revision: str | None = None,
                   digest: Callable[[str], str] = file_digest, settings: Mapping[str, Any] | None = None) -> dict:
    """Everything that changes a score, as a JSON-ready dict (the model resolved as :class:`Scorer` resolves it).

    ``settings`` are the backend's options: those that can change a score (a LoRA adapter, by its weights; a dtype)
    are part of the key, while transport and capacity settings (:data:`TRANSPORT`) are not."""
    spec = ModelSpec.resolve(model, profile=profile, revision=revision)
    chosen = spec.profile
    prompts = [chosen.system_prompt, chosen.think_prompt, chosen.nothink_prompt, chosen.answer_prefix,
               list(chosen.score_range)]
    return {"model": spec.checkpoint, "weights": spec.fingerprint(digest),
            "backend": backend or DEFAULT_BACKEND, "profile": chosen.name,
            "prompts": hashlib.sha256(json.dumps(prompts).encode()).hexdigest()[:16], "max_pixels": max_pixels,
            "version": [READING_VERSION, SCHEMA_VERSION], **_scoring_settings(settings or {}, digest)}


def _scoring_settings(settings: Mapping[str, Any], digest: Callable[[str], str]) -> dict:
    kept = {k: weights_fingerprint(str(v), digest) if k == "lora" else v
            for k, v in sorted(settings.items()) if k not in TRANSPORT}
    return {"settings": kept} if kept else {}  # no key at all without them: older stores keep their keys


def config_key(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]

"""Fingerprints: a file's content hash, and the key of everything that changes a score.

Two runs share stored readings only when their scoring configurations have the same key: the model id, a hash
of its weight files (a local folder) or its hub revision, the backend, the profile's name and a hash of its
prompts, the pixel budget and :data:`READING_VERSION`. Nothing here loads a model.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..registry import get_profile, profile_for_model
from ..result import SCHEMA_VERSION
from ..scorer import DEFAULT_BACKEND, resolve_model

READING_VERSION = 1  # bump when the way a score is read from an answer changes
# Backend settings that change where or how fast a score is computed, never the score itself.
TRANSPORT = frozenset({"base_url", "api_key_env", "concurrency", "timeout", "max_retries", "device",
                       "gpu_memory_utilization", "tensor_parallel_size", "enforce_eager", "max_model_len"})


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's content, read in chunks."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def weights_fingerprint(model_id: str, digest: Callable[[str], str] = file_digest, revision: str | None = None) -> str:
    """A hash over a local checkpoint folder's files (names and contents), else ``hub:<id>@<revision>`` with the
    commit the local hub cache resolved the revision to, when it has one."""
    folder = Path(model_id)
    if folder.is_dir():
        files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
        return hashlib.sha256(json.dumps([(p.name, digest(str(p))) for p in files]).encode()).hexdigest()
    revision = revision or "main"
    hub = Path(os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME", Path.home() / ".cache/huggingface"))
               / "hub")
    ref = hub / f"models--{model_id.replace('/', '--')}" / "refs" / revision
    commit = ref.read_text().strip() if ref.is_file() else revision
    return f"hub:{model_id}@{commit}"


def scoring_config(model: str | None = None, *, backend: str | None = None, profile: str | None = None,
                   max_pixels: int | None = None, revision: str | None = None,
                   digest: Callable[[str], str] = file_digest, settings: Mapping[str, Any] | None = None) -> dict:
    """Everything that changes a score, as a JSON-ready dict (the profile is chosen as :class:`Scorer` does).

    ``settings`` are the backend's options: those that can change a score (a LoRA adapter, by its weights; a dtype)
    are part of the key, while transport and capacity settings (:data:`TRANSPORT`) are not."""
    model_id, declared = resolve_model(model)
    name = profile or declared
    chosen = get_profile(name) if name else profile_for_model(model_id)
    prompts = [chosen.system_prompt, chosen.think_prompt, chosen.nothink_prompt, chosen.answer_prefix,
               list(chosen.score_range)]
    return {"model": model_id, "weights": weights_fingerprint(model_id, digest, revision),
            "backend": backend or DEFAULT_BACKEND, "profile": chosen.name,
            "prompts": hashlib.sha256(json.dumps(prompts).encode()).hexdigest()[:16], "max_pixels": max_pixels,
            "version": [READING_VERSION, SCHEMA_VERSION], **_scoring_settings(settings or {}, digest)}


def _scoring_settings(settings: Mapping[str, Any], digest: Callable[[str], str]) -> dict:
    kept = {k: weights_fingerprint(str(v), digest) if k == "lora" else v
            for k, v in sorted(settings.items()) if k not in TRANSPORT}
    return {"settings": kept} if kept else {}  # no key at all without them: older stores keep their keys


def config_key(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]

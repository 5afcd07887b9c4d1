"""One model description, resolved once: :class:`ModelSpec` (checkpoint, family, profile, revision).

Every surface takes a spec: :func:`~qponder_plugin.assess`, :class:`~qponder_plugin.Scorer`, the gate, the filter's
store key, the ComfyUI loader and the training commands. A name resolves here and nowhere else: an alias from
:func:`list_models` (the bundled ``nano``, or a public checkpoint a profile names), ``$QPONDER_MODEL``, a local
folder (its ``qponder.json`` may declare the profile) or a hub id. The family is read from the checkpoint's
``config.json`` (a folder's, or the local hub cache's), so a new architecture family is a line in :data:`FAMILIES`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .profile import Profile
from .registry import get_profile, get_profiles, profile_for_model

MODEL_ENV = "QPONDER_MODEL"
MODEL_CARD = "qponder.json"  # optional file in a checkpoint folder: {"profile": "..."}
NANO = Path(__file__).with_name("nano")  # the bundled qponder-nano checkpoint: the offline default
FAMILIES = {  # config.json model_type -> family
    "qwen2_vl": "qwen2-vl", "qwen2_5_vl": "qwen2.5-vl", "qwen3_vl": "qwen3-vl", "qwen3_vl_moe": "qwen3-vl",
    "qwen3_5": "qwen3.5", "qwen3_5_moe": "qwen3.5",
}


class ModelNotFoundError(ValueError):
    """No model was named, or the name is not a known alias, hub id or folder."""


@dataclass(frozen=True)
class ModelInfo:
    alias: str
    model_id: str
    profile: str


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's content, read in chunks."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def nano_installed() -> bool:
    return (NANO / "config.json").is_file()


def list_models() -> list[ModelInfo]:
    """The bundled nano model and the known public checkpoints (from the registered profiles), by alias."""
    bundled = [ModelInfo("nano", str(NANO), _read_json(NANO / MODEL_CARD).get("profile", "qponder"))] \
        if nano_installed() else []
    return bundled + [ModelInfo(alias, hub_id, profile.name)
                      for profile in get_profiles().values() for alias, hub_id in profile.checkpoints.items()]


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def hub_subfolder(model: str) -> tuple[str, dict]:
    """``owner/name/sub/folder``, not a local path, names a checkpoint in a hub repository's subfolder (MR-IQA-2
    keeps its scorer in ``actor/``): the repository id and the ``subfolder`` argument that loads it."""
    parts = model.split("/")
    if len(parts) > 2 and not os.path.isabs(model) and not os.path.exists(model):
        return "/".join(parts[:2]), {"subfolder": "/".join(parts[2:])}
    return model, {}


def checkpoint_folder(model: str, revision: str | None = None) -> str:
    """``model`` as an engine that takes only a folder or a repository id can load it: an ``owner/name/subfolder``
    checkpoint is fetched (that subfolder only; from the local hub cache when ``HF_HUB_OFFLINE`` is set) and its
    local folder returned; anything else is returned as it is."""
    repo, where = hub_subfolder(model)
    if not where:
        return model
    from huggingface_hub import snapshot_download

    local = snapshot_download(repo, revision=revision, allow_patterns=[f"{where['subfolder']}/*"])
    return os.path.join(local, where["subfolder"])


def _hub_file(model_id: str, name: str, revision: str | None) -> Path | None:
    """A file of a hub checkpoint from the local hub cache, without reaching the hub."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    repo, where = hub_subfolder(model_id)
    try:
        found = try_to_load_from_cache(repo, "/".join([*where.values(), name]), revision=revision)
    except ValueError:  # not a hub id (a folder that does not exist, say): the backend says so when it loads
        return None
    return Path(found) if isinstance(found, str) else None


@dataclass(frozen=True)
class ModelSpec:
    """A resolved model: ``checkpoint`` (a folder or a hub id), its ``profile`` (prompts and parser), its
    architecture ``family`` (``None`` for a hub checkpoint not in the local cache yet), the hub ``revision``, and
    the ``alias`` it was named by."""

    checkpoint: str
    profile: Profile
    family: str | None = None
    revision: str | None = None
    alias: str | None = None

    @classmethod
    def resolve(cls, model: str | os.PathLike | ModelSpec | None = None, *, profile: str | Profile | None = None,
                revision: str | None = None) -> ModelSpec:
        """Resolve ``model`` (default ``$QPONDER_MODEL``, else the bundled nano model); ``profile`` overrides the
        one the checkpoint or alias declares, else the profile is matched from the checkpoint's name."""
        if isinstance(model, ModelSpec):
            return model if profile is None else cls(model.checkpoint, _profile(profile, model.checkpoint),
                                                     model.family, model.revision, model.alias)
        name = os.fspath(model) if model is not None else os.environ.get(MODEL_ENV)
        if not name:
            if not nano_installed():
                raise ModelNotFoundError(
                    f"no model given and the bundled nano model is missing from {NANO}: pass model=... (or "
                    f"--model), or set {MODEL_ENV}. Use a hub id such as TianheWu/VisualQuality-R1-7B, a local "
                    "checkpoint folder, or an alias from `qponder models`.")
            name = "nano"
        alias, checkpoint, declared = None, name, None
        for info in list_models():
            if info.alias == name.lower():
                alias, checkpoint, declared = info.alias, info.model_id, info.profile
        folder = Path(checkpoint)
        if declared is None:
            declared = _read_json(folder / MODEL_CARD).get("profile")
        config_file = folder / "config.json" if folder.is_dir() else _hub_file(checkpoint, "config.json", revision)
        config = _read_json(config_file) if config_file else {}
        family = FAMILIES.get(config.get("model_type"), config.get("model_type"))
        return cls(checkpoint, _profile(profile or declared, checkpoint), family, revision, alias)

    def fingerprint(self, digest: Callable[[str], str] = file_digest) -> str:
        """A hash over a local checkpoint folder's files (names and contents), else ``hub:<id>@<commit>`` with the
        commit the local hub cache resolved the revision to, when it has one."""
        return weights_fingerprint(self.checkpoint, digest, self.revision)


def _profile(profile: str | Profile | None, checkpoint: str) -> Profile:
    if isinstance(profile, Profile):
        return profile
    return get_profile(profile) if profile else profile_for_model(checkpoint)


def weights_fingerprint(model_id: str, digest: Callable[[str], str] = file_digest, revision: str | None = None) -> str:
    """:meth:`ModelSpec.fingerprint` for any checkpoint or adapter folder named by ``model_id``."""
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

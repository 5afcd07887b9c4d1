"""Which weights a benchmark measured: the ``# weights:`` line at the top of its results.

    # weights: qponder_plugin/nano sha256:bf25110f...      (a checkpoint: its folder or hub id, and its digest)
    # weights: none (no model)                            (a run that measures no model)

The digest is the sha256 of the checkpoint's ``model.safetensors``; for a multi-file checkpoint (sharded, or an
adapter), of its weight files' bytes read one after another in sorted name order. So a single-file digest is what
``sha256sum model.safetensors`` prints. Standard library only: a benchmark prints this before it loads anything.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NANO = ROOT / "qponder_plugin" / "nano"
PREFIX = "# weights: "
NO_MODEL = f"{PREFIX}none (no model)"
WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt", "*.pth")  # the first pattern that matches any file is used


def weight_files(folder: Path) -> list[Path]:
    """The checkpoint's weight files: ``model.safetensors`` alone if present, else the first pattern's files."""
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]
    for pattern in WEIGHT_FILES:
        found = sorted(p for p in folder.glob(pattern) if p.is_file())
        if found:
            return found
    return []


def weights_digest(folder: str | os.PathLike) -> str | None:
    """sha256 (hex) of the checkpoint's weight files, in sorted order; None when the folder holds none."""
    files = weight_files(Path(folder))
    if not files:
        return None
    digest = hashlib.sha256()
    for path in files:
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()


def hub_snapshot(model_id: str) -> Path | None:
    """The local Hugging Face cache's snapshot of ``model_id`` at ``refs/main``, if there is one (no network)."""
    home = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface")
    repo = Path(os.environ.get("HF_HUB_CACHE") or home / "hub") / f"models--{model_id.replace('/', '--')}"
    ref = repo / "refs" / "main"
    snapshot = repo / "snapshots" / ref.read_text().strip() if ref.is_file() else None
    return snapshot if snapshot and snapshot.is_dir() else None


def locate(model: str | os.PathLike | None) -> tuple[str, Path | None]:
    """``(label, folder)``: the folder (relative to the checkout when inside it) or hub id, and where its weights
    are here. No model, ``nano`` or ``qponder-nano`` is the bundled model; other aliases go through the registry."""
    name = os.fspath(model) if model is not None else (os.environ.get("QPONDER_MODEL") or "nano")
    if name.lower() in ("nano", "qponder-nano"):
        folder = NANO
    elif Path(name).expanduser().is_dir():
        folder = Path(name).expanduser().resolve()
    else:
        from qponder_plugin.spec import ModelSpec  # an alias (visualquality-r1-7b) or a hub id: no torch

        name = ModelSpec.resolve(name).checkpoint
        if Path(name).is_dir():
            folder = Path(name).resolve()
        else:
            return name, hub_snapshot(name)
    label = str(folder.relative_to(ROOT)) if folder.is_relative_to(ROOT) else str(folder)
    return label, folder


def weights_line(model: str | os.PathLike | None) -> str:
    """``# weights: <folder or id> sha256:<hex>`` for one model (``nano``, a folder, an alias or a hub id)."""
    label, folder = locate(model)
    digest = weights_digest(folder) if folder else None
    if digest is None:
        return f"{PREFIX}{label} sha256:unknown ({'no weight files in ' + str(folder) if folder else 'no local copy'})"
    return f"{PREFIX}{label} sha256:{digest}"


def weights_header(*models: str | os.PathLike | None) -> str:
    """One ``# weights:`` line per model measured, or ``# weights: none (no model)`` for none."""
    return "\n".join(weights_line(model) for model in models) if models else NO_MODEL

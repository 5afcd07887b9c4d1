"""The gate file: a threshold that never travels without the model it was calibrated for.

A small JSON file that ``qponder calibrate`` writes and ``qponder filter --gate-file``,
:meth:`QualityGate.from_file <qponder_plugin.gate.QualityGate.from_file>` and the ComfyUI gate read::

    {"schema": "qponder-gate", "schema_version": 1, "model": "nano", "profile": "qponder", "strategy": "fast",
     "threshold": 2.87, "margin": 0.25, "provenance": {"method": "labels", "n": 175, "weights": "…", …}}

``model``, ``profile``, ``strategy``, ``threshold`` and ``margin`` are what a gate is built from; ``provenance``
says how the threshold was chosen (the method, the data, its figures, the weights digest, the date and the qponder
version) and is never read back into a gate. A reader refuses a file of a newer schema version.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ._version import __version__
from .spec import ModelSpec

SCHEMA = "qponder-gate"
SCHEMA_VERSION = 1
GATE_KEYS = ("threshold", "model", "profile", "strategy", "margin")  # what a gate file sets


class GateFileError(ValueError):
    """A gate file that cannot be read, or that does not match the model it is used with."""


@dataclass(frozen=True)
class GateFile:
    """A calibrated gate: the ``threshold`` (1–5) for ``model`` read through ``profile``, the ``strategy``
    (``fast``: no-think readings, ``think``: reasoned ones; what was calibrated) and the cascade's ``margin``."""

    threshold: float
    model: str
    profile: str
    strategy: str = "fast"
    margin: float = 0.25
    provenance: dict = field(default_factory=dict)
    source: str | None = field(default=None, compare=False)  # the file it was read from

    def gate_options(self) -> dict:
        """The keyword arguments of :class:`~qponder_plugin.gate.QualityGate` this file sets."""
        return {name: getattr(self, name) for name in GATE_KEYS}

    def to_dict(self) -> dict:
        return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "model": self.model, "profile": self.profile,
                "strategy": self.strategy, "threshold": self.threshold, "margin": self.margin,
                "provenance": self.provenance}

    def apply(self, given: Mapping[str, Any], explicit: Collection[str]) -> tuple[dict, list[str]]:
        """``given`` settings (a command's flags, say) with this file's gate settings in place of those the user
        did not set (``explicit`` names the ones they did), and notes on what overrides the file. A model or profile
        set to another than the file's raises :class:`GateFileError`."""
        chosen = {name: given[name] for name in GATE_KEYS if name in explicit and given.get(name) is not None}
        problem = self.mismatch(chosen.get("model"), chosen.get("profile"))
        if problem:
            raise GateFileError(f"{self.source}: {problem}" if self.source else problem)
        notes = []
        if chosen.get("threshold", self.threshold) != self.threshold:
            notes.append(f"threshold {chosen['threshold']:g} overrides the gate file's {self.threshold:g}")
        if chosen.get("strategy", self.strategy) != self.strategy:
            notes.append(f"strategy {chosen['strategy']} overrides the gate file's {self.strategy}, whose threshold "
                         f"was calibrated on {self.strategy} readings")
        return {**given, **self.gate_options(), **chosen}, notes

    def stale(self, weights: str | None) -> str | None:
        """A note when the model's weights now (their digest, ``weights``) are not those the threshold was chosen
        on, or ``None``."""
        calibrated = self.provenance.get("weights")
        if calibrated and weights and calibrated != weights:
            return (f"the weights of {self.model} changed since its gate file's threshold was chosen "
                    f"({calibrated[:12]}… then, {weights[:12]}… now): calibrate again to trust it")
        return None

    def mismatch(self, model: str | ModelSpec | None = None, profile: str | None = None) -> str | None:
        """Why a gate for ``model`` (and ``profile``) cannot use this file's threshold, or ``None`` when it can.
        Names resolve as everywhere (an alias and its folder are the same model)."""
        if model is not None:
            mine, theirs = ModelSpec.resolve(self.model), ModelSpec.resolve(model)
            if mine.checkpoint != theirs.checkpoint:
                shown = model.checkpoint if isinstance(model, ModelSpec) else model
                return (f"the gate file's threshold was calibrated for model {self.model!r}, not {shown!r}: a "
                        f"threshold belongs to its model; calibrate {shown!r} (qponder calibrate) or leave out the "
                        "model")
        if profile is not None and profile != self.profile:
            return (f"the gate file's threshold was calibrated with profile {self.profile!r}, not {profile!r}: the "
                    "profile's prompts change the scores; calibrate again or leave out the profile")
        return None


def new_provenance(method: str, model: ModelSpec, weights: str | None, **figures) -> dict:
    """The provenance of a threshold chosen now by ``method`` for ``model`` (whose weights digest is ``weights``)."""
    return {"method": method, **figures, "checkpoint": model.checkpoint, "weights": weights,
            "created": datetime.now(UTC).isoformat(timespec="seconds"), "qponder_version": __version__}


def read_gate_file(path: str | os.PathLike) -> GateFile:
    """Read and check a gate file; a :class:`GateFileError` says what is wrong with it."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except OSError as exc:
        raise GateFileError(f"{path}: cannot read the gate file ({exc.strerror or exc})") from exc
    except ValueError as exc:
        raise GateFileError(f"{path}: not a gate file (not JSON: {exc})") from exc
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise GateFileError(f"{path}: not a gate file (no \"schema\": \"{SCHEMA}\"); qponder calibrate writes them")
    version = data.get("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise GateFileError(f"{path}: gate file schema version {version!r}; this qponder ({__version__}) reads "
                            f"version {SCHEMA_VERSION} and older: upgrade qponder-plugin")
    threshold, margin = data.get("threshold"), data.get("margin", 0.25)
    for name, value in (("threshold", threshold), ("margin", margin)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise GateFileError(f"{path}: {name} must be a number, not {value!r}")
    if not 1.0 <= threshold <= 5.0 or margin < 0:
        raise GateFileError(f"{path}: threshold {threshold} must be within 1–5 and margin {margin} at least 0")
    for name in ("model", "profile", "strategy"):
        if not isinstance(data.get(name), str) or not data[name]:
            raise GateFileError(f"{path}: {name} must be a name, not {data.get(name)!r}")
    provenance = data.get("provenance", {})
    if not isinstance(provenance, dict):
        raise GateFileError(f"{path}: provenance must be an object")
    return GateFile(float(threshold), data["model"], data["profile"], data["strategy"], float(margin), provenance,
                    path)


def write_gate_file(path: str | os.PathLike, gate: GateFile, *, overwrite: bool = False) -> None:
    """Write ``gate`` to ``path`` with :func:`atomic_write`."""
    atomic_write(path, (json.dumps(gate.to_dict(), indent=2) + "\n").encode(), overwrite=overwrite)


def atomic_write(path: str | os.PathLike, data: bytes, *, overwrite: bool = False) -> None:
    """Write ``data`` to ``path`` atomically: a part file beside it, synced, then linked or renamed into place. An
    existing file is replaced only with ``overwrite``; otherwise :class:`FileExistsError`."""
    path = os.path.abspath(os.fspath(path))
    fd, part = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".part", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        umask = os.umask(0o022)
        os.umask(umask)
        os.chmod(part, 0o666 & ~umask)  # as open() would have made it
        if overwrite:
            os.replace(part, path)
        else:
            os.link(part, path)  # atomic, and never replaces an existing file
    finally:
        if os.path.exists(part):
            os.unlink(part)

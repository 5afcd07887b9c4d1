"""What the training commands are given, checked before any work starts: the model (resolved as the core resolves
it) and trainer settings (typed by the ``SFTConfig`` / ``GRPOConfig`` field they set)."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path

from qponder_plugin.spec import ModelSpec


class SettingError(ValueError):
    """A trainer setting or a model that cannot be used; the message names it."""


def resolve_training_model(model: str | None) -> str:
    """``model`` as the core resolves it (an alias such as ``nano``, ``$QPONDER_MODEL``, a folder, a hub id). A hub
    id must be in the local hub cache when ``HF_HUB_OFFLINE`` is set, and must exist on the hub otherwise: this is
    checked once, up front, instead of failing after a minute of retries inside transformers."""
    model_id = ModelSpec.resolve(model).checkpoint
    if Path(model_id).is_dir():
        return model_id
    from huggingface_hub import constants, try_to_load_from_cache
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(try_to_load_from_cache(model_id, "config.json"), str):
        return model_id
    if constants.HF_HUB_OFFLINE:
        raise SettingError(f"model {model!r} is not a folder, an alias (see `qponder models`) or in the local hub "
                           "cache, and HF_HUB_OFFLINE is set")
    from huggingface_hub import model_info

    try:
        model_info(model_id, timeout=15)
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise SettingError(f"model {model!r} is not a folder, an alias (see `qponder models`) or a model the hub "
                           f"can serve: {type(exc).__name__}: {exc}") from exc
    return model_id


def typed_settings(config_class: type, settings: dict[str, object]) -> dict[str, object]:
    """``settings`` with each value converted to the type of the ``config_class`` field it sets (YAML 1.1 reads
    ``1e-4`` as text; the field says float). An unknown field or an unconvertible value is a :class:`SettingError`."""
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    hints = typing.get_type_hints(config_class)
    typed = {}
    for key, value in settings.items():
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise SettingError(f"{key!r} is not a {config_class.__name__} field{hint}")
        typed[key] = _convert(key, value, hints[key])
    return typed


_SCALARS = (bool, int, float)


def _convert(key: str, value: object, hint) -> object:
    """Convert to a scalar type the field admits (``Optional[float]`` -> float); anything else is kept as read."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if value is None and type(None) in options:
        return None
    scalars = [t for t in options if t in _SCALARS]
    if not scalars or type(value) in scalars or (isinstance(value, str) and str in options):
        return value
    for kind in scalars:
        try:
            return _to_scalar(kind, value)
        except (TypeError, ValueError):
            continue
    raise SettingError(f"{key} expects {' or '.join(t.__name__ for t in scalars)}, got {value!r}")


def _to_scalar(kind: type, value: object):
    if kind is bool:
        text = str(value).strip().lower()
        if text in ("true", "1", "yes", "on"):
            return True
        if text in ("false", "0", "no", "off"):
            return False
        raise ValueError(value)
    if kind is int and isinstance(value, float) and not value.is_integer():
        raise ValueError(value)
    return kind(value)

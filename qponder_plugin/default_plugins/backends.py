"""The built-in backends. Each engine is imported only when a scorer first uses it."""

from __future__ import annotations

from ..backend import lazy
from ..hookspecs import hookimpl


@hookimpl
def register_backends(register):
    register("transformers", lazy("qponder_plugin.default_plugins.transformers_backend:TransformersBackend"))

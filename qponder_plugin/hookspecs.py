"""The extension points of qponder-plugin, as pluggy hook specifications.

Collector hooks receive a ``register`` callable (the simonw/llm style); built-in backends,
profiles, image loaders and CLI commands register through the very same hooks.
"""

from __future__ import annotations

import pluggy

PROJECT = "qponder_plugin"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_hookspecs(register):
    """Add hook specifications of your own: ``register(module_or_class)`` (pytest's ``pytest_addhooks`` pattern).

    A wing or plugin that offers extension points of its own (the training wing's rewards and teachers) declares
    them here; the core calls this for every plugin as it loads, before it checks hook names.
    """


@hookspec
def register_backends(register):
    """Add inference backends: ``register(name, factory)``.

    ``factory(model, **options)`` returns a :class:`qponder_plugin.backend.Backend`. Import heavy engines
    inside the factory, never at module import time.
    """


@hookspec
def register_profiles(register):
    """Add model profiles: ``register(profile)`` with a :class:`qponder_plugin.profile.Profile`."""


@hookspec
def register_image_loaders(register):
    """Add image loaders: ``register(loader)``.

    ``loader(source)`` returns ``None`` when it does not handle ``source``; otherwise anything the core loader
    accepts (a PIL image, a numpy array, bytes). The result still goes through the core pipeline (EXIF, alpha,
    mode, pixel cap), so every backend sees the same pixels.
    """


@hookspec
def register_commands(cli):
    """Add commands to the ``qponder`` click group ``cli``."""


@hookspec
def on_assessed(assessment):
    """Observe every finished :class:`qponder_plugin.Assessment` (logging, metrics, databases)."""

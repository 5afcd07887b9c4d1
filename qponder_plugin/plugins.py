"""The plugin manager: built-ins, entry-point plugins, and isolation of broken plugins.

Third-party plugins are distributions exposing an entry point in the ``qponder_plugin`` group. Set
``QPONDER_DISABLE_PLUGINS=1`` (or a comma-separated list of entry-point names) to switch them off; plugins that
ship inside the ``qponder-plugin`` distribution itself (its wings) always load.
"""

from __future__ import annotations

import importlib
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import entry_points
from types import MappingProxyType
from typing import Any

import pluggy

from . import hookspecs


ENTRY_POINT_GROUP = hookspecs.PROJECT
DISABLE_ENV = "QPONDER_DISABLE_PLUGINS"
OWN_DISTRIBUTION = "qponder-plugin"
BUILTIN_MODULES = ("qponder_plugin.profiles", "qponder_plugin.backends", "qponder_plugin.commands")


class PluginWarning(UserWarning):
    """A third-party plugin failed to load or raised inside a hook; the core carries on without it."""


@dataclass
class PluginInfo:
    name: str
    origin: str  # "builtin", or the distribution name and version
    status: str = "loaded"  # loaded | disabled | error
    error: str | None = None
    hooks: list[str] = field(default_factory=list)


@dataclass
class Plugins:
    manager: pluggy.PluginManager
    info: dict[str, PluginInfo]

    def collect(self, hook: str, **kwargs) -> None:
        """Call every implementation of ``hook`` in turn; one that raises is reported, the others still run."""
        for impl in getattr(self.manager.hook, hook).get_hookimpls():
            try:
                impl.function(**{name: kwargs[name] for name in impl.argnames})
            except Exception as exc:  # a plugin's bug must not take the core down
                self._report(impl.plugin_name, f"hook {hook} raised {type(exc).__name__}: {exc}")

    def _report(self, name: str, message: str) -> None:
        info = self.info.setdefault(name, PluginInfo(name, "unknown"))
        info.status, info.error = "error", message
        warnings.warn(f"qponder plugin {name!r}: {message}", PluginWarning, stacklevel=2)


def _disabled_names() -> set[str] | None:
    """None: nothing disabled; empty set: every third-party plugin disabled; else the named ones."""
    value = os.environ.get(DISABLE_ENV, "").strip()
    if not value or value.lower() in {"0", "false", "no"}:
        return None
    if value.lower() in {"1", "true", "yes", "all", "*"}:
        return set()
    return {part.strip() for part in value.split(",") if part.strip()}


def _is_disabled(name: str, disabled: set[str] | None) -> bool:
    return disabled is not None and (not disabled or name in disabled)


@cache
def get_plugins() -> Plugins:
    """Build the plugin manager once per process."""
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    plugins = Plugins(manager, {})
    for module_name in BUILTIN_MODULES:
        manager.register(importlib.import_module(module_name), name=module_name)
        plugins.info[module_name] = PluginInfo(module_name, "builtin")
    disabled = _disabled_names()
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist else "unknown"
        first_party = dist.replace("_", "-").lower() == OWN_DISTRIBUTION
        origin = f"{dist} {ep.dist.version}" if ep.dist else dist
        if manager.get_plugin(ep.name) is not None:
            continue
        if not first_party and _is_disabled(ep.name, disabled):
            plugins.info[ep.name] = PluginInfo(ep.name, origin, status="disabled")
            continue
        plugins.info[ep.name] = PluginInfo(ep.name, origin)
        try:
            manager.register(ep.load(), name=ep.name)
        except Exception as exc:
            plugins._report(ep.name, f"failed to load {ep.value}: {type(exc).__name__}: {exc}")
    for name, info in plugins.info.items():
        plugin = manager.get_plugin(name)
        if plugin is not None:
            info.hooks = sorted(caller.name for caller in manager.get_hookcallers(plugin) or [])
    return plugins


def collect(hook: str, **kwargs) -> None:
    get_plugins().collect(hook, **kwargs)


def gather(hook: str, key: Callable[[Any], str] | None = None) -> MappingProxyType:
    """A read-only registry from a collector hook: plugins call ``register(name, value)``, or ``register(value)``
    when ``key`` names it. A name registered twice is that plugin's error (reported); the first one stays."""
    found: dict[str, Any] = {}

    def register(*args) -> None:
        name, value = (key(args[0]), args[0]) if key else args
        if name in found:
            raise ValueError(f"{hook}: {name!r} is already registered")
        found[name] = value

    collect(hook, register=register)
    return MappingProxyType(found)


def notify_assessed(assessment) -> None:
    """Fire ``on_assessed``; an observer that raises is reported and the batch goes on."""
    collect("on_assessed", assessment=assessment)

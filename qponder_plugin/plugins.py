"""The plugin manager: the built-in plugins, entry-point plugins, plugins registered at run time, and isolation
of broken ones.

Third-party plugins are distributions exposing an entry point in the ``qponder_plugin`` group. Set
``QPONDER_DISABLE_PLUGINS=1`` (or a comma-separated list of entry-point names) to switch them off; they are then
blocked in pluggy and never imported. Plugins that ship inside the ``qponder-plugin`` distribution itself (its
wings) always load. The manager is built once per process; the registries built on it
(:mod:`qponder_plugin.registry`) are collected on every lookup, so ``register_plugin()`` takes effect at once.
"""

from __future__ import annotations

import importlib
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib.metadata import entry_points
from types import MappingProxyType
from typing import Any

import pluggy

from . import hookspecs

ENTRY_POINT_GROUP = hookspecs.PROJECT
DISABLE_ENV = "QPONDER_DISABLE_PLUGINS"
OWN_DISTRIBUTION = "qponder-plugin"
BUILTIN_MODULES = (*(f"qponder_plugin.default_plugins.{name}" for name in ("profiles", "backends", "commands")),
                   "qponder_plugin.filter.command")


class PluginWarning(UserWarning):
    """A third-party plugin failed to load or raised inside a hook; the core carries on without it."""


@dataclass
class PluginInfo:
    name: str
    origin: str  # "builtin", "runtime", or the distribution name and version
    status: str = "loaded"  # loaded | disabled | error
    error: str | None = None


class Plugins:
    """A pluggy manager with a record of where each plugin came from and what went wrong with it."""

    def __init__(self) -> None:
        self.manager = pluggy.PluginManager(hookspecs.PROJECT)
        self.manager.add_hookspecs(hookspecs)
        self.info: dict[str, PluginInfo] = {}

    def register(self, plugin: object, name: str | None = None, origin: str = "runtime") -> str | None:
        """Register ``plugin`` (a module or an object with ``@hookimpl`` methods); ``None`` if its name is blocked."""
        registered = self.manager.register(plugin, name=name)
        if registered is None:
            blocked = name or self.manager.get_canonical_name(plugin)
            self.info[blocked] = PluginInfo(blocked, origin, status="disabled")
            return None
        self.info[registered] = PluginInfo(registered, origin)
        self.collect("register_hookspecs", only=registered, register=self.manager.add_hookspecs)
        return registered

    def unregister(self, name: str) -> None:
        self.manager.unregister(name=name)
        self.info.pop(name, None)

    def block(self, name: str, origin: str) -> None:
        self.manager.set_blocked(name)
        self.info[name] = PluginInfo(name, origin, status="disabled")

    def _callers(self, name: str) -> list:
        plugin = self.manager.get_plugin(name)
        return (self.manager.get_hookcallers(plugin) or []) if plugin is not None else []

    def hooks(self, name: str) -> list[str]:
        return sorted(caller.name for caller in self._callers(name))

    def unknown_hooks(self, name: str) -> list[str]:
        """Hooks ``name`` implements that no specification declares (and not marked ``optionalhook``): usually a
        misspelt name, whose function is never called."""
        return sorted(caller.name for caller in self._callers(name) if not caller.has_spec()
                      and any(impl.plugin_name == name and not impl.optionalhook for impl in caller.get_hookimpls()))

    def collect(self, hook: str, *, only: str | None = None, **kwargs) -> None:
        """Call every implementation of ``hook`` (or only plugin ``only``'s); one that raises is reported, the
        others still run."""
        caller = getattr(self.manager.hook, hook, None)
        for impl in caller.get_hookimpls() if caller is not None else []:
            if only is not None and impl.plugin_name != only:
                continue
            try:
                impl.function(**{name: kwargs[name] for name in impl.argnames})
            except Exception as exc:  # a plugin's bug must not take the core down
                self.report(impl.plugin_name, f"hook {hook} raised {type(exc).__name__}: {exc}")

    def report(self, name: str, message: str) -> None:
        info = self.info.setdefault(name, PluginInfo(name, "unknown"))
        info.status, info.error = "error", message
        warnings.warn(f"qponder plugin {name!r}: {message}", PluginWarning, stacklevel=3)


def _disabled_names() -> set[str] | None:
    """None: nothing disabled; empty set: every third-party plugin disabled; else the named ones."""
    value = os.environ.get(DISABLE_ENV, "").strip()
    if not value or value.lower() in {"0", "false", "no"}:
        return None
    if value.lower() in {"1", "true", "yes", "all", "*"}:
        return set()
    return {part.strip() for part in value.split(",") if part.strip()}


@cache
def get_plugins() -> Plugins:
    """Build the plugin manager once per process: the built-ins, then every entry point not switched off."""
    plugins = Plugins()
    for module_name in BUILTIN_MODULES:
        plugins.register(importlib.import_module(module_name), module_name, "builtin")
    disabled = _disabled_names()
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist else "unknown"
        origin = f"{dist} {ep.dist.version}" if ep.dist else dist
        if plugins.manager.has_plugin(ep.name) or plugins.manager.is_blocked(ep.name):
            continue
        first_party = dist.replace("_", "-").lower() == OWN_DISTRIBUTION
        if not first_party and disabled is not None and (not disabled or ep.name in disabled):
            plugins.block(ep.name, origin)
            continue
        try:
            module = ep.load()
        except Exception as exc:
            plugins.info[ep.name] = PluginInfo(ep.name, origin)
            plugins.report(ep.name, f"failed to load {ep.value}: {type(exc).__name__}: {exc}")
            continue
        plugins.register(module, ep.name, origin)
    return plugins


def register_plugin(plugin: object, name: str | None = None) -> str | None:
    """Register a plugin at run time (a module, class or object with ``@hookimpl`` functions). The next lookup
    of a backend, profile, loader or command sees it. Returns its name (``None`` if that name is disabled)."""
    return get_plugins().register(plugin, name)


def unregister_plugin(name: str) -> None:
    get_plugins().unregister(name)


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

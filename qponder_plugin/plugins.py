"""The plugin manager: the built-in plugins, entry-point plugins, plugins registered at run time, and isolation
of broken ones.

Third-party plugins are distributions exposing an entry point in the ``qponder_plugin`` group. Set
``QPONDER_DISABLE_PLUGINS=1`` (or a comma-separated list of entry-point names) to switch them off; they are then
blocked in pluggy and never imported. Plugins that ship inside the ``qponder-plugin`` distribution itself (its
wings) always load. The manager is built once per process; the registries built on it
(:mod:`qponder_plugin.registry`) are collected on every lookup, so ``register_plugin()`` takes effect at once.

Every hook is called through pluggy, so ``tryfirst``/``trylast``, wrappers and ``firstresult`` work as pluggy
documents. Isolation is done at registration: each implementation of the plugin is guarded in place, so one that
raises is reported (:class:`PluginWarning`, ``status == "error"``) and the call goes on without it.
"""

from __future__ import annotations

import importlib
import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import cache, partial, wraps
from importlib.metadata import entry_points
from types import MappingProxyType
from typing import Any

import pluggy

from . import hookspecs

ENTRY_POINT_GROUP = hookspecs.PROJECT
DISABLE_ENV = "QPONDER_DISABLE_PLUGINS"
OWN_DISTRIBUTION = "qponder-plugin"
BUILTIN_MODULES = (*(f"qponder_plugin.default_plugins.{name}" for name in ("profiles", "backends", "commands")),
                   "qponder_plugin.filter.command", "qponder_plugin.filter.calibrate")


_running: ContextVar[str | None] = ContextVar("qponder_plugin_running", default=None)  # whose hook code runs


@contextmanager
def _running_as(name: str) -> Iterator[None]:
    token = _running.set(name)
    try:
        yield
    finally:
        _running.reset(token)


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
        """Register ``plugin`` (a module or an object with ``@hookimpl`` methods) and guard each of its hook
        implementations; ``None`` if its name is blocked."""
        registered = self.manager.register(plugin, name=name)
        if registered is None:
            blocked = name or self.manager.get_canonical_name(plugin)
            self.info[blocked] = PluginInfo(blocked, origin, status="disabled")
            return None
        self.info[registered] = PluginInfo(registered, origin)
        for caller in self._callers(registered):
            for impl in caller.get_hookimpls():
                if impl.plugin_name == registered:
                    impl.function = self._guard(impl, caller.name)
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

    def _guard(self, impl: pluggy.HookImpl, hook: str) -> Callable:
        """``impl.function``, isolated: if it raises it is reported and returns ``None``, so pluggy goes on without
        it. A wrapper that raises before its ``yield`` is reported and stands aside; after it, it runs as written."""
        function, name = impl.function, impl.plugin_name

        def failed(exc: Exception) -> None:
            self.report(name, f"hook {hook} raised {type(exc).__name__}: {exc}")

        if not (impl.wrapper or impl.hookwrapper):
            @wraps(function)
            def guarded(*args, **kwargs):
                try:
                    with _running_as(name):
                        return function(*args, **kwargs)
                except Exception as exc:  # a plugin's bug must not take the core down
                    failed(exc)
                    return None

            return guarded

        @wraps(function)
        def guarded_wrapper(*args, **kwargs):
            try:
                with _running_as(name):
                    teardown = function(*args, **kwargs)
                    next(teardown)
            except Exception as exc:
                failed(exc)
                return (yield)  # as if absent: the result or exception passes through untouched
            try:
                outcome = yield
            except BaseException as exc:  # the call raised: the wrapper sees the exception
                resume = partial(teardown.throw, exc)
            else:
                resume = partial(teardown.send, outcome)
            try:
                with _running_as(name):
                    resume()
            except StopIteration as stop:
                return stop.value
            yield  # the wrapper yielded twice: yield twice too, so pluggy reports it

        return guarded_wrapper

    def collect(self, hook: str, *, only: str | None = None, **kwargs) -> Any:
        """Call ``hook`` through pluggy (on plugin ``only``'s implementation alone, if given) and return pluggy's
        result."""
        caller = getattr(self.manager.hook, hook, None)
        if caller is None:  # neither specified nor implemented
            return []
        if only is not None:
            others = self.manager.get_plugins() - {self.manager.get_plugin(only)}
            caller = self.manager.subset_hook_caller(hook, others)
        return caller(**kwargs)

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


def collect(hook: str, **kwargs) -> Any:
    return get_plugins().collect(hook, **kwargs)


def gather(hook: str, key: Callable[[Any], str] | None = None) -> MappingProxyType:
    """A read-only registry from a collector hook: plugins call ``register(name, value)``, or ``register(value)``
    when ``key`` names it. Entries are in the plugins' registration order (the built-ins first), whatever order
    pluggy calls them in; a name registered twice stays with the first, and the other is its plugin's error."""
    plugins = get_plugins()
    offers: list[tuple[str | None, str, Any]] = []  # (plugin, name, value) in call order

    def register(*args) -> None:
        name, value = (key(args[0]), args[0]) if key else args
        offers.append((_running.get(), name, value))

    plugins.collect(hook, register=register)
    order = {name: i for i, name in enumerate(plugins.info)}
    found: dict[str, tuple[str | None, Any]] = {}
    for plugin, name, value in sorted(offers, key=lambda offer: order.get(offer[0], len(order))):
        if name in found:
            plugins.report(plugin or "unknown", f"hook {hook}: {name!r} is already registered by {found[name][0]}")
        else:
            found[name] = (plugin, value)
    return MappingProxyType({name: value for name, (_, value) in found.items()})


def notify_assessed(assessment) -> None:
    """Fire ``on_assessed``; an observer that raises is reported and the batch goes on."""
    collect("on_assessed", assessment=assessment)

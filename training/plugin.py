"""The training wing as a plugin: found by the ``training`` entry point of the qponder-plugin distribution.

The core never imports this package; it loads it like any third-party plugin.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache

from qponder_plugin import hookimpl
from qponder_plugin.plugins import gather, get_plugins

from . import hookspecs


def _ensure_specs() -> None:
    manager = get_plugins().manager
    if manager.hook.__dict__.get("register_rewards") is None or manager.hook.register_rewards.spec is None:
        manager.add_hookspecs(hookspecs)


@hookimpl
def register_commands(cli):
    from .cli import eval_command, train

    cli.add_command(train)
    cli.add_command(eval_command)


@hookimpl
def register_rewards(register):
    from .rewards import builtin_rewards

    for name, reward in builtin_rewards().items():
        register(name, reward)


@hookimpl
def register_teachers(register):
    from .describer import MeasuredTeacher
    from .distill import BackendTeacher

    register("backend", BackendTeacher)
    register("measured", MeasuredTeacher)


@cache
def get_rewards() -> Mapping:
    _ensure_specs()
    return gather("register_rewards")


@cache
def get_teachers() -> Mapping:
    _ensure_specs()
    return gather("register_teachers")

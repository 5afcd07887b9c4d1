"""The training wing as a plugin: found by the ``training`` entry point of the qponder-plugin distribution.

The core never imports this package; it loads it like any third-party plugin, and the wing declares its own
extension points (rewards, teachers) through ``register_hookspecs``.
"""

from __future__ import annotations

from qponder_plugin import hookimpl

from . import hookspecs


@hookimpl
def register_hookspecs(register):
    register(hookspecs)


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

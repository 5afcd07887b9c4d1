"""Extension points of the training wing, declared to the core through its plugin's ``register_hookspecs``."""

from __future__ import annotations

from qponder_plugin.hookspecs import hookspec


@hookspec
def register_rewards(register):
    """Add GRPO rewards: ``register(name, reward)``.

    ``reward(completions, **columns) -> list[float | None]`` is a plain trl reward function: ``completions`` are
    ``[{"role": "assistant", "content": text}]`` lists (or strings) and every dataset column (``mos``, ...) arrives
    as a keyword argument. A reward may have a ``bind(trainer)`` method to receive the trainer (and its model).
    """


@hookspec
def register_teachers(register):
    """Add distillation teachers: ``register(name, factory)``; ``factory(**options)`` returns a teacher with
    ``explain(images, moses) -> list[str | Exception]`` writing reasoning that ends in the given score."""

"""The training wing's live registries, fed by its own hooks (``register_rewards``, ``register_teachers``)."""

from __future__ import annotations

from collections.abc import Mapping

from qponder_plugin.plugins import gather


def get_rewards() -> Mapping:
    """Every registered GRPO reward by name."""
    return gather("register_rewards")


def get_teachers() -> Mapping:
    """Every registered distillation teacher factory by name."""
    return gather("register_teachers")

"""The ``qponder`` command line. Commands, built-in and third-party alike, arrive through ``register_commands``."""

from __future__ import annotations

import click

from ._version import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="qponder")
def cli() -> None:
    """Reasoning-based image quality assessment: reasoning plus a 1–5 score per image."""


def build() -> click.Group:
    """Attach every plugin's commands to the group (idempotent)."""
    from .plugins import collect

    collect("register_commands", cli=cli)
    return cli


def main() -> None:
    build()(prog_name="qponder")

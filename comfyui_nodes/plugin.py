"""The ComfyUI wing as a plugin (the ``comfyui`` entry point): it adds ``qponder comfyui install``."""

from __future__ import annotations

from qponder_plugin import hookimpl


@hookimpl
def register_commands(cli):
    from .install import comfyui

    cli.add_command(comfyui)

"""``qponder comfyui install``: link the pip-installed pack into a ComfyUI's ``custom_nodes/`` folder."""

from __future__ import annotations

import sys
from pathlib import Path

import click

MARKER = "# Written by `qponder comfyui install`"
LOADER = f'''{MARKER}: loads the qponder-plugin node pack installed in ComfyUI's Python environment.
from qponder_plugin.comfyui.pack import exports

globals().update(exports())
'''


class InstallError(click.ClickException):
    """The pack could not be linked in; the message says why and what to do."""


def install(comfyui_dir: Path, name: str = "qponder") -> Path:
    """Write the loader into ``comfyui_dir/custom_nodes/name/__init__.py`` and return that file. A folder or file
    of that name that this command did not write is never touched."""
    custom_nodes = comfyui_dir / "custom_nodes"
    if not custom_nodes.is_dir():
        raise InstallError(f"{comfyui_dir} has no custom_nodes/ folder: pass the ComfyUI folder (or the "
                           "--base-directory it runs with)")
    target = custom_nodes / name
    loader = target / "__init__.py"
    if (custom_nodes / f"{name}.py").exists():
        raise InstallError(f"{custom_nodes / (name + '.py')} exists already; choose another --name")
    if target.exists() or target.is_symlink():
        ours = loader.is_file() and loader.read_text().startswith(MARKER)
        if not ours or sorted(p.name for p in target.iterdir() if p.name != "__pycache__") != ["__init__.py"]:
            raise InstallError(f"{target} exists and was not written by qponder comfyui install; it is left as "
                               "it is: remove it yourself, or choose another --name")
    target.mkdir(exist_ok=True)
    loader.write_text(LOADER)
    return loader


@click.group()
def comfyui():
    """The ComfyUI node pack."""


@comfyui.command("install")
@click.argument("comfyui_dir", default=".", type=click.Path(file_okay=False, path_type=Path))
@click.option("--name", default="qponder", show_default=True, help="Folder name under custom_nodes/.")
def install_command(comfyui_dir: Path, name: str):
    """Make ComfyUI at COMFYUI_DIR (default: here) load the node pack installed in this Python."""
    loader = install(comfyui_dir, name)
    click.echo(f"wrote {loader}")
    click.echo(f"ComfyUI must run with a Python that has qponder-plugin installed, e.g. {sys.executable}; "
               "restart it to load the QPonder nodes (category image/quality).")

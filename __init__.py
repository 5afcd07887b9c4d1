"""This repository as a ComfyUI node pack: ComfyUI (and ComfyUI-Manager, the Comfy Registry) load this file when the
repository is cloned into ``custom_nodes/``. The pack itself is ``comfyui_nodes/``; pytest and the packaging ignore
this file (tests live in ``tests/``, and setuptools lists its packages)."""

import importlib.util
import os
import sys

if importlib.util.find_spec("qponder_plugin") is None:  # a plain clone: the core library sits beside this file
    sys.path.append(os.path.dirname(os.path.abspath(__file__)))

from .comfyui_nodes.pack import exports  # noqa: E402

globals().update(exports())

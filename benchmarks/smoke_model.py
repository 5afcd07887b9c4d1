"""The offline smoke model of the nano recipe's folder (``examples/nano/smoke.py``), for the benchmarks that run it.

``examples/nano`` holds plain modules, not an installed package: this puts it on ``sys.path`` once, for every
benchmark here.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "nano"))

from smoke import brightness_score, build_tiny_model, solid_image  # noqa: E402

__all__ = ["brightness_score", "build_tiny_model", "solid_image"]

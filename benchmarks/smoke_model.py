"""The offline smoke model of the nano recipe's folder (``examples/nano/smoke.py``), for the benchmarks that run it.

``examples/nano`` holds plain modules, not an installed package: this puts it on ``sys.path`` once, for every
benchmark here. A benchmark run without ``--model`` uses the smoke model, built once into ``.cache/``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "nano"))

from smoke import brightness_score, build_tiny_model, solid_image  # noqa: E402

__all__ = ["brightness_score", "build_tiny_model", "model_or_smoke", "solid_image"]

SMOKE_DIR = Path(__file__).resolve().parents[1] / ".cache" / "qponder-smoke"
MODEL_HELP = "a model folder, an alias such as nano, or a hub id (default: the smoke model, built once)"


def model_or_smoke(model: str | Path | None) -> str:
    """``model`` as given; without one, the trained smoke model, built into ``.cache/qponder-smoke`` once."""
    if model is not None:
        return str(model)
    if not (SMOKE_DIR / "config.json").is_file():
        print(f"building the smoke model in {SMOKE_DIR} (about a minute, once)...", flush=True)
        build_tiny_model(SMOKE_DIR)
    return str(SMOKE_DIR)

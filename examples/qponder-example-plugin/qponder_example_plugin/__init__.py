"""An example third-party plugin for qponder-plugin.

It is found through the ``example`` entry point in the ``qponder_plugin`` group (see ``pyproject.toml``) and
implements three hooks:

* ``register_profiles``: a ``likert-10`` profile that asks any instruct VLM for a 0–10 score; the core maps it
  onto the 1–5 scale (0 -> 1, 10 -> 5) and clamps and flags anything outside 0–10.
* ``register_image_loaders``: ``.npy`` files holding an image array (HxWxC or CxHxW, uint8 or float 0..1) load
  like any other image; the array still goes through the core pipeline (dtype, layout, alpha, pixel cap).
* ``on_assessed``: when ``QPONDER_EXAMPLE_LOG`` names a file, every assessment is appended to it as one JSON line.

Keep a plugin's import cheap: the core imports it in every process, even for ``qponder --help``.
"""

from __future__ import annotations

import json
import os

import numpy as np

from qponder_plugin import hookimpl
from qponder_plugin.images import ImageError
from qponder_plugin.profile import Profile

LOG_ENV = "QPONDER_EXAMPLE_LOG"

_RATING = ("Rate the overall visual quality of this image on a scale from 0 to 10, where 0 means unusable "
           "(severely blurred, noisy, badly exposed or broken) and 10 means flawless. Consider sharpness, noise, "
           "exposure, colour, compression artifacts and composition.")

LIKERT_10 = Profile(
    name="likert-10",
    description="Zero-shot 0–10 rating for any instruct VLM (example plugin); mapped onto 1–5.",
    think_prompt=(f"{_RATING} First describe the quality problems you see inside <think> </think> tags, then give "
                  "only the score, a number from 0 to 10, inside <answer> </answer> tags."),
    nothink_prompt=f"{_RATING} Give only the score, a number from 0 to 10, inside <answer> </answer> tags.",
    score_range=(0.0, 10.0),
)


@hookimpl
def register_profiles(register):
    register(LIKERT_10)


def load_npy(source):
    """Load a ``.npy`` path as an array; ``None`` for anything else, so the core (or another loader) handles it."""
    if not isinstance(source, (str, os.PathLike)) or not os.fspath(source).lower().endswith(".npy"):
        return None
    path = os.fspath(source)
    if not os.path.isfile(path):
        return None  # let the core report the missing file in its usual words
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise ImageError(f"{path}: not a readable .npy array ({exc})") from exc


@hookimpl
def register_image_loaders(register):
    register(load_npy)


@hookimpl
def on_assessed(assessment):
    path = os.environ.get(LOG_ENV)
    if not path:
        return
    with open(path, "a", encoding="utf-8") as log:
        log.write(json.dumps(assessment.to_dict(), ensure_ascii=False) + "\n")

"""A teacher without a large model: it measures the image and writes reasoning grounded in the measurements.

For offline cold starts (no 72B teacher at hand). Measured with numpy/scipy on the luminance of the image, scaled
to at most 512 px on its long side:

- sharpness: variance of the Laplacian; a blurred image whose gradients share one orientation (the coherence of
  the smoothed structure tensor, 0 to 1) reads as motion blur, otherwise as out of focus;
- noise: Immerkær's fast noise estimate (a Laplacian-difference mask, mean absolute response);
- exposure: mean luminance, and the share of clipped shadows (< 5) and highlights (> 250);
- contrast: RMS contrast (standard deviation of luminance);
- colourfulness: Hasler and Süsstrunk's metric on the opponent channels;
- colour cast: the mean chroma of the opponent channels over their mean deviation from it (Gasparini and Schettini's
  cast factor): a cast when the whole image leans to one hue, warm, cool or green/magenta by the leaning channel;
- artifacts: 8×8 blockiness (jump across block borders relative to inside blocks), a JPEG/AIGC artifact cue.

The reasoning states those findings in varied words (seeded by the image content, so a rerun writes the same
text) and ends in the score it is given, so the cold-start data teaches the answer format and a vocabulary that
refers to what is actually in the image. It is registered as the ``measured`` teacher.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

import numpy as np

_IMMERKAER = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float64)


@dataclass(frozen=True)
class Measurements:
    sharpness: float
    noise: float
    brightness: float
    shadows_clipped: float
    highlights_clipped: float
    contrast: float
    colourfulness: float
    blockiness: float
    coherence: float
    cast: float  # the cast factor: mean chroma over its mean deviation
    red_green: float  # the mean opponent channels: the direction of a cast
    yellow_blue: float


def measure(image) -> Measurements:
    """Measure a PIL RGB image (see the module docstring for each quantity)."""
    from scipy import ndimage

    image = image.copy()
    image.thumbnail((512, 512))
    rgb = np.asarray(image.convert("RGB"), dtype=np.float64)
    luma = rgb @ np.array([0.299, 0.587, 0.114])
    height, width = luma.shape
    noise_response = np.abs(ndimage.convolve(luma, _IMMERKAER))[1:-1, 1:-1]
    noise = float(np.sqrt(np.pi / 2) * noise_response.sum() / (6 * max(1, (width - 2) * (height - 2))))
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    rg, yb = red - green, 0.5 * (red + green) - blue
    colourfulness = float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))
    spread = float(np.hypot(rg - rg.mean(), yb - yb.mean()).mean())
    return Measurements(
        sharpness=float(ndimage.laplace(luma).var()), noise=noise, brightness=float(luma.mean()),
        shadows_clipped=float((luma < 5).mean()), highlights_clipped=float((luma > 250).mean()),
        contrast=float(luma.std()), colourfulness=colourfulness, blockiness=_blockiness(luma),
        coherence=_coherence(luma), cast=float(np.hypot(rg.mean(), yb.mean())) / max(spread, 1e-6),
        red_green=float(rg.mean()), yellow_blue=float(yb.mean()))


def _coherence(luma: np.ndarray) -> float:
    """How much the image's gradients share one orientation: 0 when they point every way, 1 when all are parallel
    (the eigenvalues of the structure tensor, summed over the image after a light blur)."""
    from scipy import ndimage

    gy, gx = np.gradient(ndimage.gaussian_filter(luma, 1.0))
    xx, yy, xy = (gx * gx).mean(), (gy * gy).mean(), (gx * gy).mean()
    return float(np.hypot(xx - yy, 2 * xy) / max(xx + yy, 1e-9))


def _blockiness(luma: np.ndarray) -> float:
    """Mean absolute step across 8-pixel block borders over the mean step inside blocks (≈1: no blocking)."""
    steps = np.abs(np.diff(luma, axis=1))
    if steps.shape[1] < 16:
        return 1.0
    columns = np.arange(steps.shape[1])
    border = steps[:, columns % 8 == 7].mean()
    inside = steps[:, columns % 8 != 7].mean()
    return float(border / inside) if inside > 1e-6 else 1.0


# Each finding: (condition, variants). The first matching condition per aspect is used.
FINDINGS = {
    "sharpness": [
        (lambda m: m.sharpness < 40 and m.coherence > 0.4,
         ["Sharpness: motion blur smears edges along one direction.",
          "Camera or subject motion streaks the detail in one direction."]),
        (lambda m: m.sharpness < 40, ["Sharpness: edges are soft and fine detail is blurred away.",
                                      "Focus is weak; textures smear and outlines look blurry."]),
        (lambda m: m.sharpness < 150, ["Sharpness: moderate; main edges hold but fine texture is soft.",
                                       "Detail is acceptable, though the finest textures are slightly soft."]),
        (lambda m: True, ["Sharpness: edges are crisp and fine texture is well resolved.",
                          "The image is sharp, with clear outlines and detailed texture."]),
    ],
    "noise": [
        (lambda m: m.noise > 12, ["Noise: strong grain is visible across flat areas.",
                                  "Heavy noise speckles the smooth regions."]),
        (lambda m: m.noise > 5, ["Noise: some grain shows in smooth regions.",
                                 "A moderate amount of noise is visible in flat areas."]),
        (lambda m: True, ["Noise: smooth areas are clean.", "There is little visible noise."]),
    ],
    "exposure": [
        (lambda m: m.brightness < 60 or m.shadows_clipped > 0.25,
         ["Exposure: the image is dark and shadows are crushed.", "It is underexposed; dark areas lose detail."]),
        (lambda m: m.brightness > 200 or m.highlights_clipped > 0.25,
         ["Exposure: the image is bright and highlights are blown.", "It is overexposed; bright areas clip."]),
        (lambda m: True, ["Exposure: well balanced, with detail in shadows and highlights.",
                          "Brightness is balanced and tones are preserved."]),
    ],
    "contrast": [
        (lambda m: m.contrast < 30, ["Contrast is low, so the picture looks flat and hazy.",
                                     "Tones are compressed and the image looks washed out."]),
        (lambda m: True, ["Contrast is healthy and separates the subject well.",
                          "Tonal range is good, giving the image depth."]),
    ],
    "colour": [
        (lambda m: m.colourfulness < 15, ["Colour: muted, nearly monochrome.", "Colours are dull and desaturated."]),
        (lambda m: m.cast > 2 and abs(m.yellow_blue) >= abs(m.red_green) and m.yellow_blue > 0,
         ["Colour: a warm, yellow-orange cast tints the whole image.",
          "White balance leans warm; neutrals look yellow."]),
        (lambda m: m.cast > 2 and abs(m.yellow_blue) >= abs(m.red_green),
         ["Colour: a cool, blue cast tints the whole image.", "White balance leans cool; neutrals look blue."]),
        (lambda m: m.cast > 2, ["Colour: a green or magenta tint lies over the whole image.",
                                  "A colour tint shifts the neutral tones off grey."]),
        (lambda m: m.colourfulness > 90, ["Colour: very saturated, bordering on garish.",
                                          "Colours are intense and somewhat oversaturated."]),
        (lambda m: True, ["Colour: natural and pleasant.", "Colours are vivid but natural."]),
    ],
    "artifacts": [
        (lambda m: m.blockiness > 1.4, ["Artifacts: blocky compression patterns are visible.",
                                        "Block artifacts break up smooth gradients."]),
        (lambda m: True, ["No blocking or compression artifacts stand out.", "Artifacts: none obvious."]),
    ],
}
# The reasoning's last sentence, by the MOS's upper bound (a recipe that trains without it removes these sentences).
VERDICTS = [(1.8, "Overall the quality is very poor."), (2.6, "Overall the quality is poor."),
            (3.4, "Overall the quality is fair."), (4.2, "Overall the quality is good."),
            (5.01, "Overall the quality is excellent.")]


def findings(measurements: Measurements) -> dict[str, int]:
    """Each aspect's finding for the measurements: the index of its first matching rule in ``FINDINGS``."""
    return {aspect: next(i for i, (condition, _) in enumerate(rules) if condition(measurements))
            for aspect, rules in FINDINGS.items()}


def stated(reasoning: str) -> dict[str, list[int]]:
    """Each aspect's findings that ``reasoning`` states in one of the teacher's wordings (none, one, or several)."""
    return {aspect: [i for i, (_, variants) in enumerate(rules) if any(v in reasoning for v in variants)]
            for aspect, rules in FINDINGS.items()}


def describe(measurements: Measurements, mos: float, rng: random.Random) -> str:
    """Reasoning from the measurements, ending in ``mos`` (1–5) in the qponder answer format."""
    found = findings(measurements)
    statements = [rng.choice(rules[found[aspect]][1]) for aspect, rules in FINDINGS.items()]
    verdict = next(text for bound, text in VERDICTS if mos < bound)
    return f"<think>{' '.join(statements)} {verdict}</think><answer>{mos:.2f}</answer>"


class MeasuredTeacher:
    """The ``measured`` teacher: no model; ``model`` and backend options do not apply and are ignored."""

    def __init__(self, model: str | None = None, **_options):
        self.model = model

    def explain(self, images, moses) -> list[str]:
        texts = []
        for image, mos in zip(images, moses):
            seed = int.from_bytes(hashlib.sha256(image.tobytes()[:65536]).digest()[:8], "big")
            texts.append(describe(measure(image), mos, random.Random(seed)))
        return texts

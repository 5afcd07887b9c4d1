"""Choosing a threshold people can trust, from labelled scores or from a share to keep (numpy only).

An image passes when its score is at least the threshold, as in the gate.

- :func:`choose_threshold`: the threshold that maximises balanced accuracy, the mean of the share of good images
  kept and the share of bad images rejected (it does not reward keeping everything when most images are good).
  Every cut between two adjacent distinct scores splits the images the same way, so the threshold is placed at the
  midpoint between them. Of several cuts that reach the same balanced accuracy, the lowest is chosen (it keeps the
  most images); the counts behind the comparison are integers, so ties are exact.
- :func:`calibrate`: that threshold with its confusion, the ROC curve and its AUC, and a seeded stratified
  bootstrap interval of the balanced accuracy at the chosen threshold (good and bad images are resampled
  separately, so every resample has both). The interval is for the fixed threshold: the balanced accuracy on the
  data the threshold was chosen on is optimistic, and a held-out set tells the true figure.
- :func:`keep_rate_threshold`: from unlabelled scores, the threshold that keeps ``round(rate * n)`` images (at least
  one), exactly unless scores are tied at the cut (tied images cannot be split: all of them are kept or none,
  whichever lands nearer the asked count).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# The threshold a calibration is compared with: the filter's documentation recommends none, and 3.0 is the middle of
# the 1–5 scale and the ComfyUI gate's default.
DEFAULT_THRESHOLD = 3.0


@dataclass(frozen=True)
class Confusion:
    """How a threshold splits labelled images: good ones kept and rejected, bad ones kept and rejected."""

    good_kept: int
    good_rejected: int
    bad_kept: int
    bad_rejected: int

    @property
    def balanced_accuracy(self) -> float:
        good, bad = self.good_kept + self.good_rejected, self.bad_kept + self.bad_rejected
        return 0.5 * (self.good_kept / good + self.bad_rejected / bad)

    def to_dict(self) -> dict:
        return dict(vars(self))


@dataclass(frozen=True)
class Calibration:
    """A threshold chosen on ``n`` labelled scores (``n_good`` good), how well it separates them, and how well
    ``DEFAULT_THRESHOLD`` does on the same scores."""

    threshold: float
    n: int
    n_good: int
    confusion: Confusion
    interval: tuple[float, float]
    level: float
    resamples: int
    seed: int
    auc: float
    roc: tuple[tuple[float, float], ...]  # (false-positive rate, true-positive rate), from (0, 0) to (1, 1)
    default_threshold: float
    default_confusion: Confusion

    @property
    def balanced_accuracy(self) -> float:
        return self.confusion.balanced_accuracy

    def to_dict(self, with_roc: bool = False) -> dict:
        data = {"threshold": self.threshold, "n": self.n, "n_good": self.n_good, "n_bad": self.n - self.n_good,
                "balanced_accuracy": self.balanced_accuracy, "interval": list(self.interval), "level": self.level,
                "resamples": self.resamples, "seed": self.seed, "auc": self.auc,
                "confusion": self.confusion.to_dict(), "default_threshold": self.default_threshold,
                "default_balanced_accuracy": self.default_confusion.balanced_accuracy,
                "default_confusion": self.default_confusion.to_dict()}
        if with_roc:
            data["roc"] = [list(point) for point in self.roc]
        return data


def _arrays(scores: Sequence[float], good: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    s, g = np.asarray(scores, dtype=float), np.asarray(good, dtype=bool)
    if s.shape != g.shape or s.ndim != 1:
        raise ValueError(f"{s.size} scores but {g.size} labels")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite numbers")
    if g.all() or not g.any():
        raise ValueError(f"the labels hold {'only good' if g.all() else 'only bad'} images ({g.size}): a threshold "
                         "is chosen between good and bad ones, so both are needed")
    return s, g


def confusion(scores: Sequence[float], good: Sequence[bool], threshold: float) -> Confusion:
    s, g = _arrays(scores, good)
    kept = s >= threshold
    return Confusion(int((kept & g).sum()), int((~kept & g).sum()), int((kept & ~g).sum()), int((~kept & ~g).sum()))


def balanced_accuracy(scores: Sequence[float], good: Sequence[bool], threshold: float) -> float:
    return confusion(scores, good, threshold).balanced_accuracy


def _midpoints(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """A point strictly between ``low`` and ``high`` (their midpoint; ``high`` when no float lies between)."""
    middle = low + (high - low) / 2
    return np.where(middle > low, middle, high)


def _cuts(s: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct scores ascending, and for a threshold at each: good images kept, bad images rejected."""
    values, index = np.unique(s, return_inverse=True)
    good_at = np.bincount(index[g], minlength=values.size)
    bad_at = np.bincount(index[~g], minlength=values.size)
    good_kept = good_at[::-1].cumsum()[::-1]  # scores at or above each value
    bad_rejected = np.concatenate(([0], bad_at.cumsum()[:-1]))  # scores below each value
    return values, good_kept, bad_rejected


def choose_threshold(scores: Sequence[float], good: Sequence[bool]) -> float:
    """The threshold of highest balanced accuracy: the midpoint between the adjacent distinct scores it falls
    between (the lowest score itself when keeping everything is best); of tied cuts, the lowest."""
    s, g = _arrays(scores, good)
    values, good_kept, bad_rejected = _cuts(s, g)
    # balanced accuracy * 2 * goods * bads, in integers: equal accuracies compare equal
    best = int(np.argmax(good_kept * int((~g).sum()) + bad_rejected * int(g.sum())))
    if best == 0:
        return float(values[0])
    return float(_midpoints(values[best - 1:best], values[best:best + 1])[0])


def roc_curve(scores: Sequence[float], good: Sequence[bool]) -> tuple[tuple[tuple[float, float], ...], float]:
    """The ROC points (false-positive rate, true-positive rate) of a threshold at each distinct score, from (0, 0)
    (nothing kept) to (1, 1), and the area under them (trapezoids: tied scores count half, as in Mann-Whitney)."""
    s, g = _arrays(scores, good)
    values, good_kept, bad_rejected = _cuts(s, g)
    tpr = np.concatenate(([0.0], good_kept[::-1] / g.sum()))
    fpr = np.concatenate(([0.0], (int((~g).sum()) - bad_rejected[::-1]) / (~g).sum()))
    auc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    return tuple(zip(fpr.tolist(), tpr.tolist())), auc


def bootstrap_interval(scores: Sequence[float], good: Sequence[bool], threshold: float, *, resamples: int = 1000,
                       level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """A percentile interval of the balanced accuracy at ``threshold``: good and bad images are resampled with
    replacement, each on their own (``resamples`` times, with ``numpy.random.default_rng(seed)``)."""
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1, not {level}")
    s, g = _arrays(scores, good)
    rng = np.random.default_rng(seed)
    kept_good, rejected_bad = s[g] >= threshold, s[~g] < threshold
    good_rate = kept_good[rng.integers(0, kept_good.size, (resamples, kept_good.size))].mean(axis=1)
    bad_rate = rejected_bad[rng.integers(0, rejected_bad.size, (resamples, rejected_bad.size))].mean(axis=1)
    low, high = np.quantile(0.5 * (good_rate + bad_rate), [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def calibrate(scores: Sequence[float], good: Sequence[bool], *, threshold: float | None = None,
              resamples: int = 1000, level: float = 0.95, seed: int = 0,
              default_threshold: float = DEFAULT_THRESHOLD) -> Calibration:
    """Choose the threshold on labelled scores (or take ``threshold``, chosen elsewhere) and say how well it
    separates them (see the module's notes)."""
    s, g = _arrays(scores, good)
    threshold = choose_threshold(s, g) if threshold is None else float(threshold)
    roc, auc = roc_curve(s, g)
    return Calibration(threshold, int(s.size), int(g.sum()), confusion(s, g, threshold),
                       bootstrap_interval(s, g, threshold, resamples=resamples, level=level, seed=seed), level,
                       resamples, seed, auc, roc, default_threshold, confusion(s, g, default_threshold))


def keep_rate_threshold(scores: Sequence[float], rate: float) -> tuple[float, int]:
    """The threshold that keeps ``round(rate * n)`` of the ``n`` scores (at least one), and how many it keeps:
    exactly that many unless scores are tied at the cut, when all the tied ones are kept or none, whichever count is
    nearer (on a draw, or when none would keep nothing, all of them)."""
    if not 0 < rate <= 1:
        raise ValueError(f"the keep rate is a share of the images, above 0 and at most 1, not {rate}")
    ranked = -np.sort(-np.asarray(scores, dtype=float))  # highest first
    if ranked.size == 0:
        raise ValueError("no scores to choose a keep-rate threshold from")
    if not np.isfinite(ranked).all():
        raise ValueError("scores must be finite numbers")
    wanted = min(ranked.size, max(1, math.floor(rate * ranked.size + 0.5)))  # at least one: within one image
    if wanted < ranked.size and ranked[wanted - 1] == ranked[wanted]:
        tied = ranked[wanted]
        above, through = int((ranked > tied).sum()), int((ranked >= tied).sum())
        wanted = through if through - wanted <= wanted - above or above == 0 else above
    if wanted == ranked.size:
        return float(ranked[-1]), wanted
    return float(_midpoints(ranked[wanted:wanted + 1], ranked[wanted - 1:wanted])[0]), wanted

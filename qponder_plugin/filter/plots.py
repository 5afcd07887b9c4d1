"""Threshold figures (matplotlib, Agg backend), as PNG bytes: how many images each threshold keeps, and a
calibration's ROC curve beside the scores of the good and the bad images."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

from ..calibration import Calibration

GOOD, BAD, CHOSEN, DEFAULT = "#1a7f37", "#b3261e", "#222222", "#888888"


def _figure(width: float, height: float):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100)


def _png(figure) -> bytes:
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def kept_count_axes(axes, scores: Sequence[float], threshold: float | None) -> None:
    """Draw on ``axes`` the number of images a threshold keeps (score at least the threshold), over 1–5, with
    ``threshold`` marked."""
    ranked = np.sort(np.asarray(scores, dtype=float))
    grid = np.linspace(1.0, 5.0, 401)
    kept = ranked.size - np.searchsorted(ranked, grid, side="left")
    axes.plot(grid, kept, color="#5b8def", drawstyle="steps-post")
    if threshold is not None:
        count = int(ranked.size - np.searchsorted(ranked, threshold, side="left"))
        axes.axvline(threshold, color=CHOSEN, linewidth=1.5)
        axes.plot([threshold], [count], "o", color=CHOSEN, label=f"threshold {threshold:.3f}: {count} kept")
        axes.legend()
    axes.set_xlim(1, 5)
    axes.set_ylim(0, max(1, ranked.size) * 1.05)
    axes.set_xlabel("threshold (1–5)")
    axes.set_ylabel("images kept")


def kept_count_png(scores: Sequence[float], threshold: float | None) -> bytes:
    figure = _figure(7, 3)
    kept_count_axes(figure.subplots(), scores, threshold)
    return _png(figure)


def calibration_png(calibration: Calibration, scores: Sequence[float], good: Sequence[bool]) -> bytes:
    """The ROC curve with the chosen and the default threshold's points, and the good and bad images' scores."""
    figure = _figure(10, 4)
    roc, spread = figure.subplots(1, 2)
    fpr, tpr = zip(*calibration.roc)
    roc.plot(fpr, tpr, color="#5b8def", label=f"AUC {calibration.auc:.3f}")
    roc.plot([0, 1], [0, 1], color="#cccccc", linewidth=1)
    for confusion, threshold, color in ((calibration.confusion, calibration.threshold, CHOSEN),
                                        (calibration.default_confusion, calibration.default_threshold, DEFAULT)):
        point = (confusion.bad_kept / (confusion.bad_kept + confusion.bad_rejected),
                 confusion.good_kept / (confusion.good_kept + confusion.good_rejected))
        roc.plot(*point, "o", color=color,
                 label=f"threshold {threshold:.3f}: balanced accuracy {confusion.balanced_accuracy:.3f}")
    roc.set_xlabel("bad images kept (false-positive rate)")
    roc.set_ylabel("good images kept (true-positive rate)")
    roc.legend(loc="lower right")
    s, g = np.asarray(scores, dtype=float), np.asarray(good, dtype=bool)
    bins = np.linspace(1.0, 5.0, 33)
    spread.hist([s[g], s[~g]], bins=bins, color=[GOOD, BAD], label=[f"good ({g.sum()})", f"bad ({(~g).sum()})"])
    spread.axvline(calibration.threshold, color=CHOSEN, linewidth=2, label=f"chosen {calibration.threshold:.3f}")
    spread.axvline(calibration.default_threshold, color=DEFAULT, linestyle="--",
                   label=f"default {calibration.default_threshold:g}")
    spread.set_xlim(1, 5)
    spread.set_xlabel("score (1–5)")
    spread.set_ylabel("images")
    spread.legend()
    return _png(figure)

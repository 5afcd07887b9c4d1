"""Evaluation against MOS: correlation metrics, parse-failure rate, a JSON report and a scatter plot.

``metrics(pred, mos)`` is pure numpy/scipy. ``evaluate(scorer, records, out_dir)`` scores records with a loaded
:class:`qponder_plugin.Scorer` and writes ``<name>.json`` and ``<name>.png``. scipy and matplotlib are imported
inside the functions, so importing this module stays light.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from qponder_plugin.result import reading_mode

METRIC_KEYS = ("srcc", "krcc", "plcc", "plcc_raw", "rmse", "rmse_raw", "n")


def logistic(x, b1: float, b2: float, b3: float, b4: float):
    """The VQEG 4-parameter logistic: ``f(x) = (b1 - b2) / (1 + exp(-(x - b3) / |b4|)) + b2``.

    ``b1`` and ``b2`` are the upper and lower asymptotes, ``b3`` the midpoint, ``|b4|`` the slope scale.
    """
    x = np.asarray(x, dtype=float)
    z = np.clip(-(x - b3) / max(abs(b4), 1e-12), -500.0, 500.0)  # no overflow warnings far out on the tails
    return (b1 - b2) / (1.0 + np.exp(z)) + b2


def _nan_report(n: int, notes: list[str], *, rmse_raw: float = math.nan) -> dict:
    return {"srcc": math.nan, "krcc": math.nan, "plcc": math.nan, "plcc_raw": math.nan, "rmse": math.nan,
            "rmse_raw": rmse_raw, "n": n, "logistic_fit": False, "logistic_params": None, "notes": notes}


def _fit_logistic(pred: np.ndarray, mos: np.ndarray) -> tuple[np.ndarray | None, str | None]:
    """Fit :func:`logistic` mapping ``pred`` onto ``mos``; return ``(params, None)`` or ``(None, why)``."""
    import warnings

    from scipy.optimize import OptimizeWarning, curve_fit

    if pred.size < 4:
        return None, f"logistic fit needs at least 4 points (4 parameters), got {pred.size}"
    spread = float(np.std(pred)) or 1.0
    # Upper/lower asymptotes at the MOS extremes (swapped for a decreasing relation), midpoint at the mean
    # prediction, slope scale from the prediction spread.
    high, low = float(np.max(mos)), float(np.min(mos))
    if np.corrcoef(pred, mos)[0, 1] < 0:
        high, low = low, high
    guess = [high, low, float(np.mean(pred)), spread / 2.0]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizeWarning)
            params, _ = curve_fit(logistic, pred, mos, p0=guess, maxfev=100_000)
    except (RuntimeError, ValueError, TypeError) as exc:
        return None, f"logistic fit failed ({type(exc).__name__}: {exc}); PLCC and RMSE are raw"
    fitted = logistic(pred, *params)
    if not (np.all(np.isfinite(params)) and np.all(np.isfinite(fitted))):
        return None, "logistic fit gave non-finite values; PLCC and RMSE are raw"
    if np.std(fitted) == 0:
        return None, "logistic fit collapsed to a constant; PLCC and RMSE are raw"
    return params, None


def metrics(pred: Sequence[float], mos: Sequence[float]) -> dict:
    """Agreement between predicted scores and MOS, the standard IQA way.

    Returns a dict with:

    - ``srcc``: Spearman rank correlation (``scipy.stats.spearmanr``);
    - ``krcc``: Kendall rank correlation, tau-b (``scipy.stats.kendalltau``);
    - ``plcc_raw`` / ``rmse_raw``: Pearson correlation and RMSE of the raw predictions against MOS;
    - ``plcc`` / ``rmse``: the same after mapping the predictions through the VQEG 4-parameter logistic

          f(x) = (b1 - b2) / (1 + exp(-(x - b3) / |b4|)) + b2

      fitted by least squares (``scipy.optimize.curve_fit``; initial guess ``b1 = max(mos)``, ``b2 = min(mos)``
      (swapped when the relation is decreasing), ``b3 = mean(pred)``, ``b4 = std(pred) / 2``). The curve may come
      out decreasing (``b1 < b2``), so an inverted scorer gets a positive ``plcc``; ``srcc``/``krcc`` keep the sign;
    - ``n``: number of finite (pred, mos) pairs used; pairs with a NaN or infinite value are dropped;
    - ``logistic_fit``: True if the fit succeeded; if it failed, ``plcc`` and ``rmse`` fall back to the raw values;
    - ``logistic_params``: ``[b1, b2, b3, b4]`` or None;
    - ``notes``: human-readable reasons for anything unusual (dropped pairs, failed fit, NaN metrics).

    With fewer than 3 pairs, or constant predictions or MOS, the correlations are NaN (with a note) rather than an
    error; the raw RMSE is still given when there is at least one pair.
    """
    pred_a = np.asarray(pred, dtype=float).ravel()
    mos_a = np.asarray(mos, dtype=float).ravel()
    if pred_a.shape != mos_a.shape:
        raise ValueError(f"pred and mos differ in length: {pred_a.size} vs {mos_a.size}")
    notes: list[str] = []
    finite = np.isfinite(pred_a) & np.isfinite(mos_a)
    if not finite.all():
        notes.append(f"dropped {int((~finite).sum())} pair(s) with a non-finite value")
        pred_a, mos_a = pred_a[finite], mos_a[finite]
    n = int(pred_a.size)
    rmse_raw = float(np.sqrt(np.mean((pred_a - mos_a) ** 2))) if n else math.nan
    if n < 3:
        notes.append(f"only {n} pair(s): correlations need at least 3, so they are NaN")
        return _nan_report(n, notes, rmse_raw=rmse_raw)
    constant = [name for name, values in (("predictions", pred_a), ("MOS", mos_a)) if np.ptp(values) == 0]
    if constant:
        notes.append(f"constant {' and '.join(constant)}: correlations are undefined, so they are NaN")
        return _nan_report(n, notes, rmse_raw=rmse_raw)

    from scipy import stats

    srcc = float(stats.spearmanr(pred_a, mos_a)[0])
    krcc = float(stats.kendalltau(pred_a, mos_a)[0])
    plcc_raw = float(stats.pearsonr(pred_a, mos_a)[0])
    params, problem = _fit_logistic(pred_a, mos_a)
    if params is None:
        notes.append(problem)
        plcc, rmse = plcc_raw, rmse_raw
    else:
        fitted = logistic(pred_a, *params)
        plcc = float(stats.pearsonr(fitted, mos_a)[0])
        rmse = float(np.sqrt(np.mean((fitted - mos_a) ** 2)))
    return {"srcc": srcc, "krcc": krcc, "plcc": plcc, "plcc_raw": plcc_raw, "rmse": rmse, "rmse_raw": rmse_raw,
            "n": n, "logistic_fit": params is not None,
            "logistic_params": None if params is None else [float(p) for p in params], "notes": notes}


def _json_safe(value):
    """NaN and infinities become ``null``: the report file stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    return value


def _label(image) -> str:
    if isinstance(image, (str, os.PathLike)):
        return os.fspath(image)
    from qponder_plugin.images import describe

    return describe(image)


def _fmt(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def plot(report: dict, path: str | os.PathLike) -> Path:
    """Scatter of predicted score (x) against MOS (y) from an :func:`evaluate` report, with the fitted logistic.

    Drawn with matplotlib's Agg canvas directly, so pyplot's global backend is never touched.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [r for r in report["rows"] if r["status"] == "ok" and r["score"] is not None and r["mos"] is not None]
    pred = np.array([r["score"] for r in rows], dtype=float)
    mos = np.array([r["mos"] for r in rows], dtype=float)
    m = report["metrics"]
    figure = Figure(figsize=(6, 5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    if rows:
        axes.scatter(pred, mos, s=18, alpha=0.7, edgecolors="none", label=f"images (n={len(rows)})")
        if m.get("logistic_params"):
            xs = np.linspace(min(pred.min(), 1.0), max(pred.max(), 5.0), 200)
            axes.plot(xs, logistic(xs, *m["logistic_params"]), color="C3", linewidth=2, label="4-parameter logistic")
        axes.legend(loc="upper left", fontsize=8)
    else:
        axes.text(0.5, 0.5, "no image was scored", ha="center", va="center", transform=axes.transAxes)
    axes.set_xlim(0.8, 5.2)
    axes.set_ylim(0.8, 5.2)
    axes.set_xlabel("predicted score (1–5)")
    axes.set_ylabel("MOS (1–5)")
    axes.grid(alpha=0.3)
    model = os.path.basename(str(report.get("model") or "").rstrip("/\\")) or "model"
    axes.set_title(f"{report.get('name', 'eval')}: {model} ({report.get('mode', '')})\n"
                   f"SRCC {_fmt(m['srcc'])}   PLCC {_fmt(m['plcc'])}   KRCC {_fmt(m['krcc'])}   "
                   f"RMSE {_fmt(m['rmse'])}", fontsize=10)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, format="png")
    return path


def evaluate(scorer, records: Iterable, out_dir: str | os.PathLike, *, think: bool = True, n: int = 1,
             temperature: float = 1.0, name: str = "eval", progress=None) -> dict:
    """Score ``records`` with ``scorer`` and compare with their MOS.

    ``records`` are objects with ``.image`` (a path or any image source) and ``.mos`` (on the 1–5 scale), such
    as :class:`qponder_plugin.training.data.MosRecord`. Metrics (see :func:`metrics`) use the images whose status
    is ``ok``. ``parse_failure_rate`` is ``parse_error / (ok + parse_error)``: the share of the model's answers
    that could not be read (image and backend errors are counted separately, not in this rate; NaN if the model
    answered nothing).

    Writes ``out_dir/<name>.json`` (the report; NaN written as ``null``) and ``out_dir/<name>.png`` (the scatter
    plot) and returns the report dict: ``name, model, profile, backend, mode, n, temperature, metrics, counts,
    parse_failure_rate, files, rows``; each row has ``image, mos, score, status, error``. ``progress(results,
    total)`` wraps the stream of results (a progress bar).
    """
    records = list(records)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images = [r.image for r in records]
    results = scorer.iter_assess(images, think=think, n=n, temperature=temperature)
    assessments = list(progress(results, len(images)) if progress else results)
    if len(assessments) != len(records):
        raise RuntimeError(f"scorer returned {len(assessments)} results for {len(records)} records")
    rows = [{"image": _label(record.image), "mos": None if record.mos is None else float(record.mos),
             "score": a.score, "status": a.status, "error": a.error}
            for record, a in zip(records, assessments)]
    counts = {"total": len(rows)}
    for status in ("ok", "parse_error", "image_error", "backend_error"):
        counts[status] = sum(r["status"] == status for r in rows)
    answered = counts["ok"] + counts["parse_error"]
    scored = [r for r in rows if r["status"] == "ok" and r["score"] is not None and r["mos"] is not None]
    profile = getattr(scorer, "profile", None)
    report = {
        "name": name,
        "model": getattr(scorer, "model_id", None),
        "profile": getattr(profile, "name", profile),
        "backend": getattr(scorer, "backend_name", None),
        "mode": reading_mode(think),
        "n": n,
        "temperature": temperature,
        "metrics": metrics([r["score"] for r in scored], [r["mos"] for r in scored]),
        "counts": counts,
        "parse_failure_rate": counts["parse_error"] / answered if answered else math.nan,
        "files": {"json": str(out / f"{name}.json"), "png": str(out / f"{name}.png")},
        "rows": rows,
    }
    plot(report, out / f"{name}.png")
    (out / f"{name}.json").write_text(json.dumps(_json_safe(report), indent=2, allow_nan=False) + "\n")
    return report

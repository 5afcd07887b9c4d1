"""The filter's HTML report: one self-contained file (thumbnails and the histogram inlined as base64).

It shows the counts, a score histogram with the threshold line and how many images each threshold would keep
(matplotlib, Agg backend), the lowest- and
highest-scoring images and those nearest the threshold with their reasoning, each near-duplicate group side by side
(``--groups``: best first, kept or rejected), and every failure with its message.
It reads the store, so it describes every input of the configuration, not only those of the last run.
"""

from __future__ import annotations

import base64
import io
import os
from html import escape

from ..images import ImageError, load_image
from .plots import kept_count_png
from .store import ResultStore

THUMB_SIDE = 192
SHOWN = 6  # images per gallery
GROUPS_SHOWN = 50  # near-duplicate groups shown (the export lists every input's group)

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
h1 { margin-bottom: 0.2em; } .meta { color: #666; }
.counts span { display: inline-block; margin: 0 1.5em 0.5em 0; font-size: 1.2em; }
.gallery { display: flex; flex-wrap: wrap; gap: 12px; }
.card { width: 220px; border: 1px solid #ddd; border-radius: 6px; padding: 8px; font-size: 0.85em; }
.card img { display: block; margin: 0 auto 6px; max-width: 100%; }
.keep { color: #1a7f37; } .reject { color: #b3261e; }
.group { display: flex; gap: 8px; overflow-x: auto; margin-bottom: 12px; }
.frame { flex: none; width: 140px; font-size: 0.8em; text-align: center; }
.frame img { display: block; margin: 0 auto 4px; max-width: 100%; }
table { border-collapse: collapse; } td, th { border: 1px solid #ddd; padding: 4px 8px; text-align: left; }
"""


def _thumbnail(path: str) -> str | None:
    try:
        image = load_image(path, max_pixels=THUMB_SIDE * THUMB_SIDE * 4)
    except ImageError:
        return None
    image.thumbnail((THUMB_SIDE, THUMB_SIDE))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=80)
    return base64.b64encode(buffer.getvalue()).decode()


def _histogram(scores: list[float], threshold: float) -> str:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 3), dpi=100)
    axes = figure.subplots()
    axes.hist(scores, bins=[1 + i * 0.125 for i in range(33)], color="#5b8def", edgecolor="white")
    axes.axvline(threshold, color="#b3261e", linewidth=2, label=f"threshold {threshold:g}")
    axes.set_xlim(1, 5)
    axes.set_xlabel("score (1–5)")
    axes.set_ylabel("images")
    axes.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return base64.b64encode(buffer.getvalue()).decode()


def _picture(row: dict) -> str:
    thumb = _thumbnail(row["path"] if os.path.exists(row["path"]) else row["placed"] or row["path"])
    return f'<img src="data:image/jpeg;base64,{thumb}" alt="">' if thumb else "<p>(no preview)</p>"


def _card(row: dict) -> str:
    picture = _picture(row)
    verdict = "keep" if row["passed"] else "reject"
    return (f'<div class="card">{picture}<b>{row["score"]:.2f}</b> <span class="{verdict}">{verdict}</span> '
            f'<small>({escape(row["stage"] or "")})</small><br><small>{escape(os.path.basename(row["path"]))}'
            f'</small><p>{escape(row["reasoning"] or "")}</p></div>')


def _gallery(title: str, rows: list[dict]) -> str:
    return f"<h2>{escape(title)}</h2><div class='gallery'>{''.join(map(_card, rows))}</div>" if rows else ""


def _frame(row: dict) -> str:
    verdict = "keep" if row["passed"] else "reject"
    score = "no score" if row["score"] is None else f"{row['score']:.2f}"
    return (f'<div class="frame">{_picture(row)}<b>{score}</b> <span class="{verdict}">{verdict}</span><br>'
            f'<small>{escape(os.path.basename(row["path"]))}</small></div>')


def _groups(rows: list[dict]) -> str:
    """Each near-duplicate group of the latest grouped run (whose verdicts were committed together) as one row
    of frames, the best score first."""
    grouped = [r for r in rows if r["group_id"] is not None]
    latest = max((r["updated"] for r in grouped), default=None)
    groups: dict[int, list[dict]] = {}
    for row in grouped:
        if row["updated"] == latest:
            groups.setdefault(row["group_id"], []).append(row)
    if not groups:
        return ""
    shown = sorted(groups)[:GROUPS_SHOWN]
    more = f"<p>{len(groups) - len(shown)} more groups: see --export.</p>" if len(groups) > len(shown) else ""
    return f"<h2>Groups of near-duplicates ({len(groups)})</h2>" + "".join(
        f"<h3>Group {number}</h3><div class='group'>"
        + "".join(map(_frame, sorted(groups[number], key=lambda r: (r["score"] is None, -(r["score"] or 0),
                                                                    r["path"]))))
        + "</div>" for number in shown) + more


def write_report(store: ResultStore, path: str | os.PathLike, config: str) -> None:
    """Write the report on the results of configuration ``config`` in ``store`` to ``path``. The threshold line is
    the latest run's (each row keeps the threshold it was judged under)."""
    columns = ("path", "score", "passed", "stage", "flagged", "status", "error", "reasoning", "model", "threshold",
               "group_id", "updated", "placed")
    rows = [dict(zip(columns, r)) for r in store.db.execute(
        f"SELECT {', '.join(columns[:-1])}, (SELECT min(target) FROM placements p WHERE p.path = results.path "
        "AND p.state = 'done') FROM results WHERE config = ? ORDER BY path", (config,))]
    threshold = max(rows, key=lambda r: r["updated"])["threshold"] if rows else None
    scored = sorted((r for r in rows if r["status"] == "ok"), key=lambda r: r["score"])
    failed = [r for r in rows if r["status"] != "ok"]
    kept = sum(bool(r["passed"]) for r in rows)
    counts = {"images": len(rows), "kept": kept, "rejected": len(rows) - kept, "failed": len(failed),
              "flagged (failed, kept)": sum(bool(r["flagged"]) for r in rows),
              "reasoned": sum(r["stage"] in ("think", "fallback") for r in rows)}
    nearest = sorted(scored, key=lambda r: abs(r["score"] - threshold))[:SHOWN]
    plot = _histogram([r["score"] for r in scored], threshold) if scored else None
    histogram = f'<img alt="score histogram" src="data:image/png;base64,{plot}">' if plot else "<p>Nothing scored.</p>"
    curve = base64.b64encode(kept_count_png([r["score"] for r in scored], threshold)).decode() if scored else None
    kept_curve = f'<img alt="images kept by each threshold" src="data:image/png;base64,{curve}">' if curve else ""
    failures = "".join(f"<tr><td>{escape(r['path'])}</td><td>{escape(r['status'])}</td>"
                       f"<td>{escape(r['error'] or '')}</td></tr>" for r in failed)
    model = rows[0]["model"] if rows else ""
    shown = "none" if threshold is None else f"{threshold:g}"
    html = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>qponder filter report</title><style>{_STYLE}</style></head>
<body><h1>qponder filter report</h1>
<p class="meta">model {escape(model or "")} · threshold {shown} · store {escape(store.path)}</p>
<div class="counts">{"".join(f"<span><b>{n}</b> {escape(k)}</span>" for k, n in counts.items())}</div>
{histogram}
{kept_curve}
{_gallery("Nearest the threshold", nearest)}
{_gallery("Lowest scores", scored[:SHOWN])}
{_gallery("Highest scores", scored[::-1][:SHOWN])}
{_groups(rows)}
<h2>Failures ({len(failed)})</h2>
{f"<table><tr><th>file</th><th>status</th><th>message</th></tr>{failures}</table>" if failed else "<p>None.</p>"}
</body></html>
"""
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(html)

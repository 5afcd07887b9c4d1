"""``qponder calibrate``: choose a threshold from labelled images or a share to keep, and write a gate file.

Images are scored through the filter's store, under the same key a filter run uses: a calibration caches its
readings, and a later ``qponder filter`` of the same images (with the gate file) makes no model call for them.
The choice itself is :mod:`qponder_plugin.calibration`'s; the gate file is :mod:`qponder_plugin.gate_file`'s.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace

import click

from ..calibration import DEFAULT_THRESHOLD
from ..default_plugins.commands import backend_options, engine_options, usage_error, with_progress
from ..hookspecs import hookimpl
from .engine import FilterRun, Outcome, judge
from .options import DEFAULT_STORE, FilterOptions
from .sources import Input

READINGS = {"fast": "no-think", "think": "think"}  # the strategy calibrated -> the reading it decides on
SHOWN_ERRORS = 5


@hookimpl
def register_commands(cli):
    cli.add_command(calibrate_command)


class ReadingRun(FilterRun):
    """A filter run that only reads: each input's deciding reading, made or taken from the store (and kept there);
    no verdict is recorded and no file is placed."""

    def finish(self, hashed, readout, fresh, group_of=None) -> Iterator[Outcome]:
        for outcome in judge(self.gate, hashed, readout, self.model):
            self._count(outcome, outcome.digest in fresh)
            yield outcome


@dataclass
class Scored:
    """The inputs' readings (``None`` for an input that could not be scored, with its error in ``errors``), the
    scoring configuration, and the run's counts."""

    scores: list[float | None]
    errors: list[str]
    config: dict
    summary: dict


def score_inputs(options: FilterOptions, inputs: list[Input]) -> Scored:
    """Score ``inputs`` through the store with ``options`` (strategy ``fast`` or ``think``), in input order."""
    from .store import ResultStore

    gate = replace(options, threshold=DEFAULT_THRESHOLD).gate()  # no fast or think reading depends on it
    with ResultStore(options.store) as store, gate:
        config = options.scoring_config(store.digest)
        run = ReadingRun(store, gate, config, options)
        scores, errors = [], []
        for outcome in with_progress(run.outcomes(inputs), len(inputs)):
            assessment = outcome.verdict.assessment
            scores.append(assessment.score if outcome.verdict.stage != "error" else None)
            if outcome.verdict.stage == "error":
                errors.append(f"{outcome.input.path}: {assessment.status}: {assessment.error}")
    return Scored(scores, errors, config, run.summary.to_dict())


def labelled_inputs(labels, label_column, split, image_root, good, bad, mos_cut) -> tuple[list[Input], list[bool],
                                                                                          dict]:
    """The labelled images, whether each is good, and how the labels were read (for the gate file)."""
    from ..labels import read_labels
    from .sources import collect_inputs

    if good or bad:
        good_inputs, bad_inputs = collect_inputs(good), collect_inputs(bad)
        if not good_inputs or not bad_inputs:
            raise click.UsageError(f"no image files in the {'--good' if not good_inputs else '--bad'} folders")
        return ([*good_inputs, *bad_inputs], [True] * len(good_inputs) + [False] * len(bad_inputs),
                {"good": list(good), "bad": list(bad)})
    try:
        label_set = read_labels(labels, column=label_column, image_root=image_root, split=split)
    except (OSError, ValueError) as exc:
        raise click.UsageError(str(exc)) from exc
    if not label_set.labels:
        raise click.UsageError(f"{labels}: no labelled rows{f' in split {split}' if split else ''}")
    inputs = [Input(label.path, os.path.basename(label.path)) for label in label_set.labels]
    source = {"labels": os.path.abspath(labels), "column": label_set.column, "kind": label_set.kind, "split": split}
    if label_set.kind == "pass/fail":
        if mos_cut is not None:
            raise click.UsageError(f"--mos-cut needs MOS labels; {label_set.column!r} holds pass/fail labels")
        return inputs, [bool(label.value) for label in label_set.labels], source
    values = [float(label.value) for label in label_set.labels]
    cut = statistics.median(values) if mos_cut is None else mos_cut
    source.update(mos_cut=cut, mos_cut_rule="the labels' median" if mos_cut is None else "given")
    return inputs, [value >= cut for value in values], source


def _check(flags: dict) -> None:
    import importlib.util

    f = flags
    labelled = bool(f["labels"] or f["good"])
    if f["labels"] and (f["good"] or f["bad"]):
        raise click.UsageError("give --labels CSV, or --good DIR and --bad DIR, not both")
    if bool(f["good"]) != bool(f["bad"]):
        raise click.UsageError("--good and --bad go together: calibration needs both kinds of examples")
    if f["sources"] and labelled:
        raise click.UsageError("SOURCES are for --keep-rate without labels; the labelled images are the sources")
    if not labelled and (f["keep_rate"] is None or not f["sources"]):
        raise click.UsageError("give labelled examples (--labels CSV, or --good DIR --bad DIR), or SOURCES with "
                               "--keep-rate R")
    if f["mos_cut"] is not None and not f["labels"]:
        raise click.UsageError("--mos-cut applies to MOS labels from --labels CSV")
    if f["gate_file"] and (f["keep_rate"] is not None or not labelled or f["out"]):
        raise click.UsageError("--gate-file judges a gate file's threshold on labelled examples: it takes no "
                               "--keep-rate, SOURCES or --out")
    for flag in ("out", "plot"):
        if f[flag] and os.path.exists(f[flag]) and not f["overwrite"]:
            raise click.UsageError(f"--{flag} {f[flag]} exists; pass --overwrite to replace it")
        if f[flag] and not os.path.isdir(os.path.dirname(os.path.abspath(f[flag]))):
            raise click.UsageError(f"--{flag} {f[flag]}: its folder does not exist")
    if f["plot"] and importlib.util.find_spec("matplotlib") is None:
        raise click.UsageError("--plot needs matplotlib (pip install 'qponder-plugin[filter]')")
    if f["backend"]:
        from ..registry import get_backends

        if f["backend"] not in get_backends():
            raise click.UsageError(f"unknown backend {f['backend']!r}; installed: {', '.join(sorted(get_backends()))}")


def judge_scores(scores: list[float], good: list[bool] | None, flags: dict) -> tuple[float, dict, object]:
    """The threshold (chosen, kept from the gate file, or keeping the share asked), the figures that describe it,
    and the :class:`~qponder_plugin.calibration.Calibration` when there are labels (else ``None``)."""
    from ..calibration import calibrate, keep_rate_threshold

    figures: dict = {}
    threshold = flags.get("threshold")  # a gate file's
    if flags["keep_rate"] is not None:
        threshold, kept = keep_rate_threshold(scores, flags["keep_rate"])
        figures.update(keep_rate=flags["keep_rate"], kept=kept, n=len(scores))
    method = "gate-file" if flags["gate_file"] else "keep-rate" if flags["keep_rate"] is not None else "labels"
    if good is None:
        return threshold, {"method": method, **figures}, None
    calibration = calibrate(scores, good, threshold=threshold, resamples=flags["resamples"], seed=flags["seed"])
    return calibration.threshold, {"method": method, **calibration.to_dict(), **figures}, calibration


@click.command("calibrate")
@click.argument("sources", nargs=-1, type=click.Path())
@click.option("--good", multiple=True, type=click.Path(exists=True, file_okay=False),
              help="A folder of images that should pass (repeatable).")
@click.option("--bad", multiple=True, type=click.Path(exists=True, file_okay=False),
              help="A folder of images that should not (repeatable).")
@click.option("--labels", type=click.Path(exists=True, dir_okay=False),
              help="A CSV of labelled images: an image column (path, image, file, filename, name) and a pass/fail "
              "column (pass, good, keep, verdict, label: 1/0, yes/no, pass/fail...) or a MOS column (mos, "
              "mos_quality, score, rating). Relative paths: beside the CSV, or in images/ there.")
@click.option("--label-column", help="The label column, when it is not found by name.")
@click.option("--mos-cut", type=float, help="MOS labels: images with at least this MOS are good (default: the "
              "labels' median, so half the images are good).")
@click.option("--split", help="Only rows of this split (the CSV's split column), e.g. val.")
@click.option("--image-root", type=click.Path(file_okay=False), help="Folder the CSV's image paths are relative to.")
@click.option("--keep-rate", type=click.FloatRange(0.0, 1.0, min_open=True),
              help="Choose the threshold that keeps this share of the images (0–1) instead of the best separating "
              "one; with labels, it is judged on them too.")
@click.option("--gate-file", type=click.Path(exists=True, dir_okay=False),
              help="Judge this gate file's threshold (with its model, profile and strategy) on the labelled "
              "examples instead of choosing one: how a calibration holds on new images.")
@click.option("-m", "--model", help="Hub id, local folder or alias (default: $QPONDER_MODEL, else the nano model).")
@click.option("--profile", help="Model profile (prompt + parser); guessed from the model when omitted.")
@backend_options
@click.option("--strategy", type=click.Choice(tuple(READINGS)), default="fast", show_default=True,
              help="The readings calibrated, and the gate file's strategy: fast (no-think) or think (reasoned).")
@click.option("--margin", type=click.FloatRange(min=0.0), default=0.25, show_default=True,
              help="The cascade margin the gate file carries (used when a filter runs it as a cascade).")
@click.option("--store", default=DEFAULT_STORE, show_default=True, type=click.Path(dir_okay=False),
              help="The filter's results store: readings are taken from it and kept in it.")
@click.option("--out", type=click.Path(dir_okay=False), help="Write the gate file here (JSON).")
@click.option("--plot", type=click.Path(dir_okay=False),
              help="Write a PNG: the ROC curve and the good and bad scores (labels), or the kept-count curve.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out or --plot file.")
@click.option("--resamples", type=click.IntRange(min=100), default=1000, show_default=True,
              help="Bootstrap resamples for the balanced accuracy's 95% interval.")
@click.option("--seed", type=int, default=0, show_default=True, help="The bootstrap's random seed.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object (the last line).")
def calibrate_command(as_json, base_url, api_key_env, backend_settings, **flags):
    """Choose a threshold: the one that best separates labelled good and bad images (--labels CSV, or --good DIR
    --bad DIR), or the one that keeps a share of SOURCES (--keep-rate R). Reports how well it separates them
    (balanced accuracy with a bootstrap interval, ROC AUC, the confusion, and the default threshold 3.0's balanced
    accuracy) and writes a gate file (--out) that `qponder filter --gate-file`, QualityGate.from_file and the
    ComfyUI gate read. Images are scored through the filter's store, so a later filter scores them no more.

    Exit status: 0 when every image was scored, 1 when some failed (the others are calibrated), 2 on a usage error.
    """
    from ..spec import ModelNotFoundError, ModelSpec
    from .command import with_gate_file
    from .sources import collect_inputs

    _check(flags)
    flags = with_gate_file(flags)
    if flags["strategy"] not in READINGS:
        raise click.UsageError(f"--gate-file {flags['gate_file']}: its strategy {flags['strategy']} is not "
                               f"calibrated; a gate file's is {' or '.join(READINGS)}")
    try:
        spec = ModelSpec.resolve(flags["model"], profile=flags["profile"])
    except (ModelNotFoundError, KeyError) as exc:
        raise usage_error(exc) from exc
    if flags["labels"] or flags["good"]:
        inputs, good, source = labelled_inputs(flags["labels"], flags["label_column"], flags["split"],
                                               flags["image_root"], flags["good"], flags["bad"], flags["mos_cut"])
    else:
        inputs, good, source = collect_inputs(flags["sources"]), None, {"sources": list(flags["sources"])}
        if not inputs:
            raise click.UsageError("no image files found in the given sources")
    options = FilterOptions(model=flags["model"], profile=flags["profile"], backend=flags["backend"],
                            strategy=flags["strategy"], store=flags["store"], batch_size=flags["batch_size"],
                            settings=engine_options(base_url, api_key_env, backend_settings))
    scored = score_inputs(options, inputs)
    usable = [i for i, score in enumerate(scored.scores) if score is not None]
    scores = [scored.scores[i] for i in usable]
    if good is not None:
        good = [good[i] for i in usable]
    try:
        threshold, figures, calibration = judge_scores(scores, good, flags)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    result = {"model": spec.alias or spec.checkpoint, "profile": spec.profile.name, "strategy": flags["strategy"],
              "reading": READINGS[flags["strategy"]], **source, **figures, "threshold": threshold}
    try:
        if flags["out"]:
            _write_gate_file(flags, spec, scored.config, result)
        if flags["plot"]:
            from ..gate_file import atomic_write
            from .plots import calibration_png, kept_count_png

            png = calibration_png(calibration, scores, good) if calibration else kept_count_png(scores, threshold)
            atomic_write(flags["plot"], png, overwrite=flags["overwrite"])
    except OSError as exc:  # a file that appeared meanwhile (never replaced), or a folder that cannot be written
        raise click.ClickException(f"cannot write {exc.filename2 or exc.filename}: {exc.strerror or exc}; the "
                                   "readings are in the store: fix it and run again") from exc
    result.update({k: scored.summary[k] for k in ("scored", "cached", "failed", "model_calls")},
                  store=flags["store"], gate_file=flags["out"] or flags["gate_file"], plot=flags["plot"],
                  errors=scored.errors)
    _print_summary(result, as_json)
    sys.exit(1 if scored.errors else 0)


def _write_gate_file(flags: dict, spec, config: dict, result: dict) -> None:
    """The gate file: the model by its alias (else its folder, absolute, or hub id), and how the threshold came."""
    from ..gate_file import GateFile, new_provenance, write_gate_file

    name = spec.alias or (os.path.abspath(spec.checkpoint) if os.path.isdir(spec.checkpoint) else spec.checkpoint)
    figures = {k: v for k, v in result.items() if k not in ("model", "profile", "strategy", "threshold", "method")}
    provenance = new_provenance(result["method"], spec, config.get("weights"), **figures,
                                backend=config.get("backend"), max_pixels=config.get("max_pixels"))
    write_gate_file(flags["out"], GateFile(result["threshold"], name, spec.profile.name, flags["strategy"],
                                           flags["margin"], provenance), overwrite=flags["overwrite"])


def _print_summary(result: dict, as_json: bool) -> None:
    for error in result["errors"][:SHOWN_ERRORS]:
        click.echo(f"not scored: {error}", err=True)
    if len(result["errors"]) > SHOWN_ERRORS:
        click.echo(f"... and {len(result['errors']) - SHOWN_ERRORS} more not scored", err=True)
    if as_json:
        click.echo(json.dumps(result))
        return
    r = result
    lines = [f"{r['model']} (profile {r['profile']}), {r['reading']} readings"]
    if "n_good" in r:
        cut = f"; good: MOS ≥ {r['mos_cut']:g} ({r['mos_cut_rule']})" if "mos_cut" in r else ""
        low, high = r["interval"]
        c = r["confusion"]
        how = {"labels": "chosen", "gate-file": "from the gate file", "keep-rate": "keeping the share asked"}
        lines[0] += f" of {r['n']} labelled images: {r['n_good']} good, {r['n_bad']} bad{cut}"
        lines += [f"threshold {r['threshold']:.3f} ({how[r['method']]}): balanced accuracy "
                  f"{r['balanced_accuracy']:.3f} ({r['level']:.0%} bootstrap interval {low:.3f}–{high:.3f}), "
                  f"AUC {r['auc']:.3f}",
                  f"  good images: {c['good_kept']} kept, {c['good_rejected']} rejected; bad images: "
                  f"{c['bad_kept']} kept, {c['bad_rejected']} rejected",
                  f"default threshold {r['default_threshold']:g}: balanced accuracy "
                  f"{r['default_balanced_accuracy']:.3f}"]
    if r["method"] == "keep-rate":
        lines.append(f"threshold {r['threshold']:.3f} keeps {r['kept']} of {r['n']} images "
                     f"({r['kept'] / r['n']:.1%}; asked {r['keep_rate']:.1%})")
    lines.append(f"{r['scored']} scored, {r['cached']} from the store ({r['model_calls']} model calls), "
                 f"{r['failed']} not scored; store {r['store']}"
                 + (f"; gate file {r['gate_file']}" if r["gate_file"] else "")
                 + (f"; plot {r['plot']}" if r["plot"] else ""))
    click.echo("\n".join(lines))

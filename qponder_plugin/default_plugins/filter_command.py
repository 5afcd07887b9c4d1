"""The built-in ``filter`` command: sort images into keep and reject folders through the quality gate."""

from __future__ import annotations

import importlib.util
import json
import sys

import click

from ..gate import GATE_MODES
from ..hookspecs import hookimpl
from ..images import DEFAULT_MAX_PIXELS, is_url
from ..placement import HOW
from .commands import backend_options, engine_options, usage_error, with_progress

DEFAULT_STORE = "qponder-results.sqlite"


@hookimpl
def register_commands(cli):
    cli.add_command(filter_command)


@click.command("filter")
@click.argument("sources", nargs=-1, type=click.Path())
@click.option("-t", "--threshold", type=click.FloatRange(1.0, 5.0), help="Keep images scoring at least this (1–5).")
@click.option("--keep", type=click.Path(file_okay=False), help="Folder for images that pass.")
@click.option("--reject", type=click.Path(file_okay=False), help="Folder for images that do not.")
@click.option("--mode", "how", type=click.Choice(HOW), default="copy", show_default=True,
              help="How files are placed; sources are only ever removed by an explicit move.")
@click.option("--store", default=DEFAULT_STORE, show_default=True, type=click.Path(dir_okay=False),
              help="SQLite results store: cache and manifest; a rerun scores nothing it already holds.")
@click.option("--report", type=click.Path(dir_okay=False),
              help="Write a self-contained HTML report (histogram, galleries, failures) here.")
@click.option("-m", "--model", help="Hub id, local folder or alias (default: $QPONDER_MODEL, else the nano model).")
@backend_options
@click.option("--gate", "gate_mode", type=click.Choice(GATE_MODES), default="cascade", show_default=True,
              help="cascade: reason only near the threshold; fast: never reason; think: always reason.")
@click.option("--margin", type=click.FloatRange(min=0.0), default=0.25, show_default=True,
              help="Cascade: reason about images whose no-think score is this close to the threshold.")
@click.option("--on-error", type=click.Choice(("reject", "keep")), default="reject", show_default=True,
              help="Unreadable or unscored images: to no folder (reject), or into the keep folder, flagged.")
@click.option("--include", multiple=True, metavar="GLOB", help="Only files matching (repeatable).")
@click.option("--exclude", multiple=True, metavar="GLOB", help="Skip files matching (repeatable).")
@click.option("--write-metadata", is_flag=True,
              help="Put the score in each placed file's XMP (a copy's own, else a NAME.EXT.xmp sidecar).")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object (the last line).")
@click.option("--export", type=click.Path(dir_okay=False),
              help="Write the store's rows to a .jsonl, .csv or .parquet manifest (SOURCES optional).")
@click.option("--engine", type=click.Choice(("local", "ray")), default="local", show_default=True,
              help="local: one backend here; ray: Ray Data over an actor pool, one backend per actor.")
@click.option("--address", help="Ray: the cluster to join (default: $RAY_ADDRESS, else a local one).")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True, help="Ray: actors.")
@click.option("--gpus-per-worker", type=click.FloatRange(min=0.0), default=0.0, show_default=True,
              help="Ray: GPUs per actor (0: one CPU each).")
@click.option("--output", type=click.Path(file_okay=False),
              help="Ray: write parquet shards and a record of finished input shards here instead of the store; "
              "SOURCES may then include WebDataset .tar shards.")
@click.option("--shard-size", type=click.IntRange(min=1), default=1000, show_default=True,
              help="With --output: files per input shard of a folder or list (the unit a rerun skips).")
def filter_command(sources, threshold, keep, reject, how, store, report, model, backend, base_url, api_key_env,
                   backend_settings, gate_mode, margin, on_error, include, exclude, write_metadata, batch_size,
                   as_json, export, engine, address, workers, gpus_per_worker, output, shard_size):
    """Score SOURCES (folders, image files, or lists of paths or URLs in .txt/.csv/.parquet) and place each image
    into --keep or --reject. Results are committed to the store before any file is placed, so a killed run resumes
    with the same command.

    Exit status: 0 when every image was scored, 1 when some failed, 2 on a usage error.
    """
    from ..backend import BackendError
    from ..filtering import FilterRun
    from ..fingerprint import scoring_config
    from ..gate import QualityGate
    from ..manifest import export_manifest
    from ..placement import PlacementError, check_writable
    from ..ray_engine import RayFilterRun, RayOptions
    from ..registry import get_backends
    from ..report import write_report
    from ..scorer import ModelNotFoundError
    from ..sources import collect_inputs
    from ..store import ResultStore

    if not sources and not export:
        raise click.UsageError("give SOURCES to filter, or --export FILE to write the store's manifest")
    if sources and threshold is None:
        raise click.UsageError("--threshold is required to filter")
    if report and importlib.util.find_spec("matplotlib") is None:
        raise click.UsageError("--report needs matplotlib (pip install 'qponder-plugin[filter]')")
    if write_metadata and importlib.util.find_spec("pyexiv2") is None:
        raise click.UsageError("--write-metadata needs pyexiv2 (pip install 'qponder-plugin[filter]')")
    if backend and backend not in get_backends():
        raise click.UsageError(f"unknown backend {backend!r}; installed: {', '.join(sorted(get_backends()))}")
    _check_engine(engine, address, workers, gpus_per_worker, output, keep, reject, report, write_metadata, export,
                  sources)
    try:
        inputs = collect_inputs([s for s in sources if not s.lower().endswith(".tar")], include, exclude)
        urls = [i.path for i in inputs if is_url(i.path)]
        if urls and (keep or reject):
            raise ValueError(f"{len(urls)} inputs are URLs (such as {urls[0]}), which cannot be placed into folders; "
                             "drop --keep and --reject and read the verdicts from the store (--export), --report "
                             "or --output")
        for folder in (keep, reject):
            if folder and sources:
                check_writable(folder)
    except (ValueError, PlacementError) as exc:
        raise click.UsageError(str(exc)) from exc
    if sources and not inputs and not output:
        raise click.UsageError("no image files found in the given sources")
    summary: dict = {"store": store}
    settings = engine_options(base_url, api_key_env, backend_settings)
    ray_options = RayOptions(address, workers, gpus_per_worker, batch_size) if engine == "ray" else None
    if output:
        _filter_to_parquet(sources, threshold, model, backend, settings, gate_mode, margin, on_error, include,
                           exclude, batch_size, output, shard_size, ray_options, as_json)
    with ResultStore(store) as results:
        if sources:
            try:
                config = scoring_config(model, backend=backend, max_pixels=DEFAULT_MAX_PIXELS, digest=results.digest,
                                        settings=settings)
            except (ModelNotFoundError, KeyError) as exc:
                raise usage_error(exc) from exc
            with QualityGate(threshold, model=model, backend=backend, mode=gate_mode, margin=margin,
                             on_error=on_error, batch_size=batch_size, **settings) as gate:
                placing = {"keep": keep, "reject": reject, "how": how, "chunk_size": batch_size * 4,
                           "write_metadata": write_metadata}
                run = RayFilterRun(results, gate, config, ray_options, **placing) if engine == "ray" else \
                    FilterRun(results, gate, config, **placing)
                try:
                    todo = run.settle(inputs)
                    for _ in with_progress(run.outcomes(todo), len(todo)):
                        pass
                except (PlacementError, BackendError, RuntimeError) as exc:
                    raise click.ClickException(f"{exc}; the store is consistent: fix it and run again") from exc
            summary = {**run.summary.to_dict(), **summary}
            if report:
                write_report(results, report, run.key, threshold)
                summary["report"] = report
        if export:
            try:
                summary["exported"] = export_manifest(results, export)
            except ValueError as exc:
                raise click.UsageError(str(exc)) from exc
    _print_summary(summary, as_json)
    sys.exit(1 if summary.get("failed") else 0)


def _check_engine(engine, address, workers, gpus_per_worker, output, keep, reject, report, write_metadata, export,
                  sources) -> None:
    if engine != "ray" and (address or workers != 1 or gpus_per_worker or output):
        raise click.UsageError("--address, --workers, --gpus-per-worker and --output need --engine ray")
    if engine == "ray" and importlib.util.find_spec("ray") is None:
        raise click.UsageError("--engine ray needs Ray Data (pip install 'qponder-plugin[ray]')")
    if output and (keep or reject or report or write_metadata or export):
        raise click.UsageError("--output writes parquet shards: --keep, --reject, --report, --write-metadata and "
                               "--export work with the store (leave out --output)")
    if not output and any(s.lower().endswith(".tar") for s in sources):
        raise click.UsageError("WebDataset .tar shards are read with --engine ray --output DIR")


def _filter_to_parquet(sources, threshold, model, backend, settings, gate_mode, margin, on_error, include, exclude,
                       batch_size, output, shard_size, options, as_json) -> None:
    """``--output``: Ray writes parquet shards; the summary is printed and the command exits here."""
    from ..fingerprint import scoring_config
    from ..gate import QualityGate
    from ..ray_engine import filter_to_parquet
    from ..scorer import ModelNotFoundError

    try:
        config = scoring_config(model, backend=backend, max_pixels=DEFAULT_MAX_PIXELS, settings=settings)
    except (ModelNotFoundError, KeyError) as exc:
        raise usage_error(exc) from exc
    gate = QualityGate(threshold, model=model, backend=backend, mode=gate_mode, margin=margin, on_error=on_error,
                       batch_size=batch_size, **settings)
    try:
        summary = filter_to_parquet(list(sources), gate, config, output, options, shard_size, include, exclude)
    except (ValueError, RuntimeError) as exc:
        raise click.ClickException(f"{exc}; finished shards are kept: run again to resume") from exc
    if as_json:
        click.echo(json.dumps(summary))
    else:
        click.echo(f"{summary['total']} images in {summary['shards'] - summary['skipped']} shards "
                   f"({summary['skipped']} finished before): {summary['kept']} kept, {summary['rejected']} rejected, "
                   f"{summary['failed']} failed. Output: {output}")
    sys.exit(1 if summary["failed"] else 0)


def _print_summary(summary: dict, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(summary))
        return
    if "total" not in summary:
        click.echo(f"{summary['exported']} rows exported from {summary['store']}")
        return
    calls = ", ".join(f"{count} {mode}" for mode, count in summary["calls"].items())
    click.echo(f"{summary['total']} images: {summary['kept']} kept, {summary['rejected']} rejected, "
               f"{summary['failed']} failed ({summary['flagged']} flagged and kept); "
               f"{summary['scored']} scored, {summary['cached']} from the store, {summary['model_calls']} model calls"
               f"{f' ({calls})' if calls else ''}; {summary['placed']} placed. Store: {summary['store']}")

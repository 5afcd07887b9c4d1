"""The ``filter`` command: its flags become one :class:`FilterOptions`, checked here and run by :func:`run`."""

from __future__ import annotations

import importlib.util
import json
import sys

import click

from ..default_plugins.commands import backend_options, engine_options, usage_error, with_progress
from ..gate import ON_ERROR, STRATEGIES
from ..hookspecs import hookimpl
from ..images import is_url
from .options import DEFAULT_STORE, FilterOptions, RayOptions
from .placement import ACTIONS

RENAMED = {"--mode": "--action", "--gate": "--strategy"}  # flags of earlier releases, still understood


@hookimpl
def register_commands(cli):
    cli.add_command(filter_command)


class FilterCommand(click.Command):
    """Reads the flags of earlier releases (:data:`RENAMED`) under their new names, with a note on stderr."""

    def parse_args(self, ctx, args):
        for index, arg in enumerate(args):
            if arg == "--":
                break
            name, sep, value = arg.partition("=")
            if name in RENAMED:
                click.echo(f"note: {name} is now {RENAMED[name]}", err=True)
                args[index] = RENAMED[name] + sep + value
        return super().parse_args(ctx, args)


@click.command("filter", cls=FilterCommand)
@click.argument("sources", nargs=-1, type=click.Path())
@click.option("-t", "--threshold", type=click.FloatRange(1.0, 5.0), help="Keep images scoring at least this (1–5).")
@click.option("--keep", type=click.Path(file_okay=False), help="Folder for images that pass.")
@click.option("--reject", type=click.Path(file_okay=False), help="Folder for images that do not.")
@click.option("--action", type=click.Choice(ACTIONS), default="copy", show_default=True,
              help="How files are placed; sources are only ever removed by an explicit move.")
@click.option("--store", default=DEFAULT_STORE, show_default=True, type=click.Path(dir_okay=False),
              help="SQLite results store: cache and manifest; a rerun scores nothing it already holds.")
@click.option("--report", type=click.Path(dir_okay=False),
              help="Write a self-contained HTML report (histogram, galleries, failures) here.")
@click.option("-m", "--model", help="Hub id, local folder or alias (default: $QPONDER_MODEL, else the nano model).")
@backend_options
@click.option("--strategy", type=click.Choice(STRATEGIES), default="cascade", show_default=True,
              help="cascade: reason only near the threshold; fast: never reason; think: always reason.")
@click.option("--margin", type=click.FloatRange(min=0.0), default=0.25, show_default=True,
              help="Cascade: reason about images whose no-think score is this close to the threshold.")
@click.option("--on-error", type=click.Choice(ON_ERROR[:2]), default="reject", show_default=True,
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
def filter_command(as_json, base_url, api_key_env, backend_settings, address, workers, gpus_per_worker, **flags):
    """Score SOURCES (folders, image files, or lists of paths or URLs in .txt/.csv/.parquet) and place each image
    into --keep or --reject. Results are committed to the store before any file is placed, so a killed run resumes
    with the same command.

    Exit status: 0 when every image was scored, 1 when some failed, 2 on a usage error.
    """
    options = FilterOptions(settings=engine_options(base_url, api_key_env, backend_settings),
                            ray=RayOptions(address, workers, gpus_per_worker, flags["batch_size"]), **flags)
    check(options)
    summary = run_parquet(options) if options.output else run(options)
    _print_summary(summary, as_json)
    sys.exit(1 if summary.get("failed") else 0)


def check(options: FilterOptions) -> None:
    """Refuse, as a usage error, what cannot run: before any model loads or any file is touched."""
    from ..registry import get_backends

    o = options
    if not o.sources and not o.export:
        raise click.UsageError("give SOURCES to filter, or --export FILE to write the store's manifest")
    if o.sources and o.threshold is None:
        raise click.UsageError("--threshold is required to filter")
    needs = {"--report": (o.report, "matplotlib", "filter"),
             "--write-metadata": (o.write_metadata, "pyexiv2", "filter"),
             "--engine ray": (o.engine == "ray", "ray", "ray")}
    for flag, (asked, module, extra) in needs.items():
        if asked and importlib.util.find_spec(module) is None:
            raise click.UsageError(f"{flag} needs {module} (pip install 'qponder-plugin[{extra}]')")
    if o.backend and o.backend not in get_backends():
        raise click.UsageError(f"unknown backend {o.backend!r}; installed: {', '.join(sorted(get_backends()))}")
    if o.engine != "ray" and (o.ray.address or o.ray.workers != 1 or o.ray.gpus_per_worker or o.output):
        raise click.UsageError("--address, --workers, --gpus-per-worker and --output need --engine ray")
    if o.output and (o.keep or o.reject or o.report or o.write_metadata or o.export):
        raise click.UsageError("--output writes parquet shards: --keep, --reject, --report, --write-metadata and "
                               "--export work with the store (leave out --output)")
    if not o.output and any(s.lower().endswith(".tar") for s in o.sources):
        raise click.UsageError("WebDataset .tar shards are read with --engine ray --output DIR")


def collect(options: FilterOptions) -> list:
    """The inputs to filter, refusing URLs where files are to be placed and folders that cannot be written."""
    from .placement import PlacementError, check_writable
    from .sources import collect_inputs

    try:
        inputs = collect_inputs(options.sources, options.include, options.exclude)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    urls = [i.path for i in inputs if is_url(i.path)]
    if urls and (options.keep or options.reject):
        raise click.UsageError(f"{len(urls)} inputs are URLs (such as {urls[0]}), which cannot be placed into "
                               "folders; drop --keep and --reject and read the verdicts from the store (--export), "
                               "--report or --output")
    if not inputs:
        raise click.UsageError("no image files found in the given sources")
    try:
        for folder in (options.keep, options.reject):
            if folder:
                check_writable(folder)
    except PlacementError as exc:
        raise click.UsageError(str(exc)) from exc
    return inputs


def run(options: FilterOptions) -> dict:
    """Filter into the store (and the keep and reject folders); write the report and the export; the summary."""
    from ..backend import BackendError
    from ..spec import ModelNotFoundError
    from .engine import FilterRun
    from .manifest import export_manifest
    from .placement import PlacementError
    from .ray_engine import RayFilterRun
    from .report import write_report
    from .store import ResultStore

    summary: dict = {"store": options.store}
    inputs = collect(options) if options.sources else []
    with ResultStore(options.store) as store:
        if options.sources:
            try:
                config = options.scoring_config(store.digest)
            except (ModelNotFoundError, KeyError) as exc:
                raise usage_error(exc) from exc
            with options.gate() as gate:
                engine = RayFilterRun if options.engine == "ray" else FilterRun
                filter_run = engine(store, gate, config, options)
                try:
                    todo = filter_run.settle(inputs)
                    for _ in with_progress(filter_run.outcomes(todo), len(todo)):
                        pass
                except (PlacementError, BackendError, RuntimeError) as exc:
                    raise click.ClickException(f"{exc}; the store is consistent: fix it and run again") from exc
            summary = {**filter_run.summary.to_dict(), **summary}
            if options.report:
                write_report(store, options.report, filter_run.key)
                summary["report"] = options.report
        if options.export:
            try:
                summary["exported"] = export_manifest(store, options.export)
            except ValueError as exc:
                raise click.UsageError(str(exc)) from exc
    return summary


def run_parquet(options: FilterOptions) -> dict:
    """``--output``: Ray writes parquet shards; the summary."""
    from ..spec import ModelNotFoundError
    from .shards import filter_to_parquet

    try:
        config = options.scoring_config()
    except (ModelNotFoundError, KeyError) as exc:
        raise usage_error(exc) from exc
    try:
        return filter_to_parquet(options, options.gate(), config)
    except (ValueError, RuntimeError) as exc:
        raise click.ClickException(f"{exc}; finished shards are kept: run again to resume") from exc


def _print_summary(summary: dict, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(summary))
    elif "shards" in summary:
        click.echo(f"{summary['total']} images in {summary['shards'] - summary['skipped']} shards "
                   f"({summary['skipped']} finished before): {summary['kept']} kept, {summary['rejected']} rejected, "
                   f"{summary['failed']} failed. Output: {summary['output']}")
    elif "total" not in summary:
        click.echo(f"{summary['exported']} rows exported from {summary['store']}")
    else:
        calls = ", ".join(f"{count} {mode}" for mode, count in summary["calls"].items())
        click.echo(f"{summary['total']} images: {summary['kept']} kept, {summary['rejected']} rejected, "
                   f"{summary['failed']} failed ({summary['flagged']} flagged and kept); {summary['scored']} scored, "
                   f"{summary['cached']} from the store, {summary['model_calls']} model calls"
                   f"{f' ({calls})' if calls else ''}; {summary['placed']} placed. Store: {summary['store']}")

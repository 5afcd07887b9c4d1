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
from .groups import DEFAULT_DISTANCE, DEFAULT_WINDOW
from .metadata import MODES as METADATA_MODES
from .metadata import NAMINGS as SIDECAR_NAMINGS
from .options import DEFAULT_STORE, FilterOptions, RayOptions
from .placement import ACTIONS

RENAMED = {"--mode": "--action", "--gate": "--strategy"}  # flags of earlier releases, still understood


@hookimpl
def register_commands(cli):
    cli.add_command(filter_command)


class FilterCommand(click.Command):
    """Reads the flags of earlier releases (:data:`RENAMED`) under their new names, with a note on stderr; a bare
    ``--write-metadata`` before a source stays the flag it was (``auto``) rather than taking the source as its mode."""

    def parse_args(self, ctx, args):
        for index, arg in enumerate(args):
            if arg == "--":
                break
            if arg == "--write-metadata" and (index + 1 == len(args) or args[index + 1] not in METADATA_MODES):
                args[index] = "--write-metadata=auto"
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
@click.option("--profile", help="Model profile (prompt + parser); guessed from the model when omitted.")
@click.option("--gate-file", type=click.Path(exists=True, dir_okay=False),
              help="A gate file from `qponder calibrate`: its threshold, model, profile, strategy and margin are the "
              "defaults (another --model is refused: the threshold belongs to its model).")
@backend_options
@click.option("--strategy", type=click.Choice(STRATEGIES), default="cascade", show_default=True,
              help="cascade: reason only near the threshold; fast: never reason; think: always reason.")
@click.option("--margin", type=click.FloatRange(min=0.0), default=0.25, show_default=True,
              help="Cascade: reason about images whose no-think score is this close to the threshold.")
@click.option("--on-error", type=click.Choice(ON_ERROR[:2]), default="reject", show_default=True,
              help="Unreadable or unscored images: to no folder (reject), or into the keep folder, flagged.")
@click.option("--include", multiple=True, metavar="GLOB", help="Only files matching (repeatable).")
@click.option("--exclude", multiple=True, metavar="GLOB", help="Skip files matching (repeatable).")
@click.option("--write-metadata", type=click.Choice(METADATA_MODES), is_flag=False, flag_value="auto",
              help="Write star ratings (-1: rejected), score and reasoning as XMP. auto (the bare flag): into copies "
              "of JPEG/PNG/WebP/TIFF files, else a sidecar; embedded; sidecar; both. Without --keep and --reject, "
              "sidecars beside the sources, which are never touched.")
@click.option("--sidecar", type=click.Choice(SIDECAR_NAMINGS), default="darktable", show_default=True,
              help="Sidecar names: darktable (and digiKam) NAME.EXT.xmp, lightroom (Adobe) NAME.xmp, or both.")
@click.option("--groups", is_flag=True,
              help="Form groups of near-duplicates (bursts, variants, copies) by look and EXIF capture time; the "
              "report shows them side by side.")
@click.option("--best-of-group", type=click.IntRange(min=1), metavar="K",
              help="Keep only the K best-scoring images of each group (and only those reaching the threshold); "
              "implies --groups.")
@click.option("--group-distance", type=click.FloatRange(0.0, 1.0), default=DEFAULT_DISTANCE, show_default=True,
              help="Groups: the share of perceptual-hash bits in which two near-duplicates may differ.")
@click.option("--group-window", type=click.FloatRange(min=0.0), default=DEFAULT_WINDOW, show_default=True,
              metavar="SECONDS", help="Groups: photos whose EXIF capture times are further apart are never grouped "
              "(inf: by look alone).")
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
    flags = with_gate_file(flags)
    options = FilterOptions(settings=engine_options(base_url, api_key_env, backend_settings),
                            ray=RayOptions(address, workers, gpus_per_worker, flags["batch_size"]), **flags)
    check(options)
    summary = run_parquet(options) if options.output else run(options)
    _print_summary(summary, as_json)
    sys.exit(1 if summary.get("failed") else 0)


def with_gate_file(flags: dict) -> dict:
    """The flags with the gate file's settings in place of those the user left at their defaults."""
    from click.core import ParameterSource

    from ..gate_file import GateFileError, read_gate_file

    if not flags["gate_file"]:
        return flags
    context = click.get_current_context()
    explicit = {name for name in flags if context.get_parameter_source(name) not in (ParameterSource.DEFAULT, None)}
    try:
        flags, notes = read_gate_file(flags["gate_file"]).apply(flags, explicit)
    except GateFileError as exc:
        raise click.UsageError(f"--gate-file {exc}") from exc
    for note in notes:
        click.echo(f"note: {note}", err=True)
    return flags


def check(options: FilterOptions) -> None:
    """Refuse, as a usage error, what cannot run: before any model loads or any file is touched."""
    from ..registry import get_backends

    o = options
    if not o.sources and not o.export:
        raise click.UsageError("give SOURCES to filter, or --export FILE to write the store's manifest")
    if o.sources and o.threshold is None:
        raise click.UsageError("--threshold (or --gate-file) is required to filter")
    if o.strategy not in STRATEGIES:
        raise click.UsageError(f"strategy {o.strategy!r} is not one of {', '.join(STRATEGIES)}")
    needs = {"--report": (o.report, "matplotlib", "filter"),
             "--write-metadata": (o.write_metadata, "pyexiv2", "filter"),
             "--groups": (o.grouped, "imagehash", "filter"),
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
    if o.sidecar != "darktable" and not o.write_metadata:
        raise click.UsageError("--sidecar names the sidecars of --write-metadata: give that too")
    if o.write_metadata == "embedded" and (o.action != "copy" or not (o.keep or o.reject)):
        raise click.UsageError("--write-metadata embedded writes into copies only (--keep/--reject with --action "
                               "copy); your own files are never edited: use sidecar or both to rate them in place")
    if not o.grouped and (o.group_distance != DEFAULT_DISTANCE or o.group_window != DEFAULT_WINDOW):
        raise click.UsageError("--group-distance and --group-window need --groups or --best-of-group")
    if o.grouped and o.engine == "ray":
        raise click.UsageError("--groups and --best-of-group decide over every score at once, on the local engine: "
                               "leave out --engine ray")
    if o.grouped and o.action == "move":
        raise click.UsageError("--groups and --best-of-group decide over the whole set, and a move killed half-way "
                               "would leave part of a group behind: use --action copy or link")


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
    if urls and options.write_metadata:
        raise click.UsageError(f"{len(urls)} inputs are URLs (such as {urls[0]}): --write-metadata writes XMP into "
                               "files and beside them, not into URLs")
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
    from ..gate_file import read_gate_file
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
            if options.gate_file and (stale := read_gate_file(options.gate_file).stale(config["weights"])):
                click.echo(f"note: {stale}", err=True)
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
        if summary.get("groups"):
            click.echo(f"{summary['groups']} groups of near-duplicates; {summary['culled']} images that reached the "
                       "threshold were not among the best of their group")

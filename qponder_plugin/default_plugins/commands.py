"""The built-in commands: ``assess``, ``models`` and ``plugins``, registered through ``register_commands``."""

from __future__ import annotations

import csv
import json
import sys

import click

from ..hookspecs import hookimpl
from ..images import DEFAULT_MAX_PIXELS

_CSV_FIELDS = ("source", "status", "score", "normalized", "text_score", "score_std", "method", "mode", "model",
               "profile", "error", "reasoning")


@hookimpl
def register_commands(cli):
    for command in (assess_command, models_command, plugins_command):
        cli.add_command(command)


def _output_option(function):
    function = click.option("--csv", "fmt", flag_value="csv", help="CSV with a header row.")(function)
    function = click.option("--json", "fmt", flag_value="json", help="JSON lines, one object per image.")(function)
    function = click.option("--table", "fmt", flag_value="table",
                            help="A table (the default on a terminal; JSON lines otherwise).")(function)
    return function


class BackendSetting(click.ParamType):
    """``KEY=VALUE`` for the backend's constructor; the value is read as JSON when it parses (``2``, ``0.85``,
    ``true``, ``{"image": 1}``), else kept as text."""

    name = "KEY=VALUE"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        key, sep, text = value.partition("=")
        if not sep or not key.isidentifier():
            self.fail(f"expected KEY=VALUE with KEY a backend setting name, got {value!r}", param, ctx)
        try:
            return key, json.loads(text)
        except ValueError:
            return key, text


def backend_options(function):
    """The options that choose an engine and configure it (shared by ``assess`` and ``filter``)."""
    for option in reversed((
        click.option("--backend", help="Inference engine: transformers (default), vllm, openai; see `qponder models`."),
        click.option("--base-url", help="The openai backend's server, e.g. http://127.0.0.1:8000/v1 "
                     "(default: $OPENAI_BASE_URL)."),
        click.option("--api-key-env", metavar="VAR", help="Environment variable holding the openai backend's API key "
                     "(default: OPENAI_API_KEY)."),
        click.option("-o", "--backend-option", "backend_settings", multiple=True, type=BackendSetting(),
                     help="A backend setting, repeatable: -o tensor_parallel_size=2 -o gpu_memory_utilization=0.85 "
                     "(vllm), -o concurrency=32 -o timeout=60 (openai)."),
    )):
        function = option(function)
    return function


def engine_options(base_url=None, api_key_env=None, settings=(), **named) -> dict:
    """The keyword arguments for the backend's constructor, from the shared options (unset ones left out)."""
    options = {"base_url": base_url, "api_key_env": api_key_env, **named}
    return {**{k: v for k, v in options.items() if v}, **dict(settings)}


def _format(fmt: str | None) -> str:
    return fmt or ("table" if sys.stdout.isatty() else "json")


@click.command("assess")
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("-m", "--model", help="Hub id, local folder or alias (see `qponder models`). "
              "Default: $QPONDER_MODEL, else the bundled nano model.")
@click.option("--profile", help="Model profile (prompt + parser); guessed from the model when omitted.")
@backend_options
@click.option("--think/--no-think", default=True, show_default=True,
              help="Reason before scoring, or read the score straight from one forward pass.")
@click.option("--max-pixels", type=click.IntRange(min=784), default=DEFAULT_MAX_PIXELS, show_default=True,
              help="Downscale larger images to this many pixels (aspect ratio kept).")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=512, show_default=True)
@click.option("-n", "--samples", type=click.IntRange(min=1), default=1, show_default=True,
              help="Sample n answers and report their mean and std (default: one greedy answer).")
@click.option("--temperature", type=click.FloatRange(min=0.0, min_open=True), default=1.0, show_default=True,
              help="Sampling temperature when --samples > 1.")
@click.option("--device", help="cpu, cuda, cuda:1, mps ... (default: best available).")
@click.option("--dtype", help="float32, bfloat16, float16 (default: bfloat16 on CUDA, else float32).")
@_output_option
def assess_command(images, model, profile, backend, base_url, api_key_env, backend_settings, think, max_pixels,
                   batch_size, max_new_tokens, samples, temperature, device, dtype, fmt):
    """Score IMAGES (files or folders) and print reasoning plus a 1–5 score for each.

    Exit status: 0 when every image was scored, 1 when some failed, 2 on a usage error.
    """
    from ..backend import BackendError
    from ..images import iter_image_files
    from ..scorer import Scorer
    from ..spec import ModelNotFoundError

    paths = list(iter_image_files(images))
    if not paths:
        raise click.UsageError("no image files found in the given folders")
    options = engine_options(base_url, api_key_env, backend_settings, device=device, dtype=dtype)
    try:
        scorer = Scorer(model, backend=backend, profile=profile, max_pixels=max_pixels, batch_size=batch_size,
                        max_new_tokens=max_new_tokens, **options)
    except (ModelNotFoundError, BackendError, KeyError, TypeError) as exc:
        raise usage_error(exc) from exc
    with scorer:
        results = scorer.iter_assess(paths, think=think, n=samples, temperature=temperature)
        failed = _emit(with_progress(results, len(paths)), _format(fmt))
    sys.exit(1 if failed else 0)


def usage_error(exc: Exception) -> click.UsageError:
    """A usage error with the exception's own message (a KeyError's repr quotes it)."""
    return click.UsageError(str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc))


def with_progress(results, total: int):
    from rich.console import Console
    from rich.progress import Progress

    console = Console(stderr=True)
    if total <= 3 or not console.is_terminal:
        yield from results
        return
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("assessing", total=total)
        for result in results:
            progress.advance(task)
            yield result


def _emit(results, fmt: str) -> int:
    """Write results as they arrive (json/csv) or as one table; return how many failed."""
    failed = 0
    if fmt == "table":
        rows = list(results)
        _print_table(rows)
        return sum(not r.ok for r in rows)
    writer = csv.DictWriter(sys.stdout, _CSV_FIELDS, extrasaction="ignore") if fmt == "csv" else None
    if writer:
        writer.writeheader()
    for result in results:
        failed += not result.ok
        if writer:
            writer.writerow(result.to_dict())
        else:
            click.echo(json.dumps(result.to_dict(), ensure_ascii=False))
        sys.stdout.flush()
    return failed


def _print_table(rows) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(show_lines=False)
    for column, style in (("image", "cyan"), ("score", "bold"), ("status", None), ("reasoning / error", None)):
        table.add_column(column, style=style, overflow="fold")
    for r in rows:
        score = f"{r.score:.2f}" + (f" ± {r.score_std:.2f}" if r.score_std is not None else "") if r.ok else "—"
        status = "[green]ok[/]" if r.ok else f"[red]{r.status}[/]"
        table.add_row(r.source, score, status, (r.reasoning or "") if r.ok else (r.error or ""))
    console = Console()
    console.print(table)
    scores = [r.score for r in rows if r.ok]
    mean = f", mean score {sum(scores) / len(scores):.2f}" if scores else ""
    console.print(f"{len(rows)} images: {len(scores)} ok, {len(rows) - len(scores)} failed{mean}"
                  f" — model {rows[0].model}, profile {rows[0].profile}, {rows[0].mode}")


@click.command("models")
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
def models_command(as_json):
    """List the known checkpoints (by alias) and the model profiles."""
    from ..registry import get_profiles
    from ..spec import list_models

    models = [vars(m) for m in list_models()]
    profiles = [{"name": p.name, "description": p.description, "score_range": list(p.score_range)}
                for p in get_profiles().values()]
    if as_json:
        click.echo(json.dumps({"models": models, "profiles": profiles, "backends": _backends()}, indent=2))
        return
    click.echo("Checkpoints (pass the alias or the hub id as --model):")
    for m in models:
        click.echo(f"  {m['alias']:<26} {m['model_id']:<36} profile: {m['profile']}")
    click.echo("\nProfiles (--profile):")
    for p in profiles:
        click.echo(f"  {p['name']:<22} {p['description']}")
    _print_backends()


def _backends() -> list[dict]:
    """Each registered backend, the modules it needs, which of them are missing, and how to install them."""
    from ..backend import missing_modules
    from ..registry import get_backends

    rows = []
    for name, factory in sorted(get_backends().items()):
        missing, extra = missing_modules(factory), getattr(factory, "extra", None)
        rows.append({"name": name, "requires": list(getattr(factory, "requires", ())), "missing": missing,
                     "install": f"pip install 'qponder-plugin[{extra}]'" if extra else None})
    return rows


def _print_backends() -> None:
    click.echo("\nBackends (--backend):")
    for row in _backends():
        needs = ", ".join(row["requires"]) or "nothing more"
        state = "ready" if not row["missing"] else f"missing {', '.join(row['missing'])}: {row['install']}"
        click.echo(f"  {row['name']:<14} needs {needs:<40} {state}")


@click.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
def plugins_command(as_json):
    """List plugins, the hooks they implement, hooks no specification knows (misspelt?), and any that failed."""
    from ..plugins import DISABLE_ENV, get_plugins
    from ..registry import get_backends, get_image_loaders, get_profiles

    get_profiles(), get_backends(), get_image_loaders()  # run every collector, so failing hooks show up below
    plugins = get_plugins()
    infos = [{**vars(info), "hooks": plugins.hooks(name), "unknown_hooks": plugins.unknown_hooks(name)}
             for name, info in plugins.info.items()]
    if as_json:
        click.echo(json.dumps(infos, indent=2))
        return
    width = max(len(info["name"]) for info in infos)
    for info in infos:
        click.echo(f"{info['name']:<{width}}  {info['origin']:<24} {info['status']:<9} {', '.join(info['hooks'])}")
        if info["error"]:
            click.echo(f"    error: {info['error']}")
        for hook in info["unknown_hooks"]:
            click.echo(f"    unknown hook {hook!r}: no such hook (misspelt?); it is never called")
    _print_backends()
    click.echo(f"\nSet {DISABLE_ENV}=1 to switch off third-party plugins.")

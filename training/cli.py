"""``qponder train distill|sft|grpo|export`` and ``qponder eval``, added to the core CLI by the wing's plugin.

Every training command takes ``--config FILE.yaml``: its keys are the command's option names (``lora_r: 8``) and
an ``args:`` mapping of ``SFTConfig`` / ``GRPOConfig`` fields; flags on the command line win. ``--arg key=value``
sets one trainer field from the command line. Both take the type of the field they set, and models resolve as the
core resolves them (``training/settings.py``), so a wrong setting or an unknown model fails before any work starts.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from .data import DATASETS, GENERIC


def _load_config(ctx: click.Context, _param, path: str | None):
    if path:
        import yaml

        config = yaml.safe_load(Path(path).read_text()) or {}
        ctx.default_map = {**(ctx.default_map or {}), **{k.replace("-", "_"): v for k, v in config.items()}}
    return path


def _trainer_args(ctx: click.Context, pairs: tuple[str, ...], config_class: type, key: str = "args") -> dict:
    """The config file's ``key`` mapping and the ``--arg`` pairs (which win), typed by the ``config_class`` fields."""
    import yaml

    from .settings import SettingError, typed_settings

    args = dict((ctx.default_map or {}).get(key) or {})
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise click.BadParameter(f"expected key=value, got {pair!r}", param_hint="--arg")
        args[key.strip()] = yaml.safe_load(value)
    try:
        return typed_settings(config_class, args)
    except SettingError as exc:
        raise click.BadParameter(str(exc), param_hint="--arg / args:") from exc


def _model(_ctx, _param, value: str | None) -> str:
    from .settings import SettingError, resolve_training_model

    try:
        return resolve_training_model(value)
    except SettingError as exc:
        raise click.BadParameter(str(exc)) from exc


def model_option(help_text: str):
    return click.option("-m", "--model", callback=_model, help=f"{help_text}: an alias (see `qponder models`), a "
                        "folder or a hub id. Default: $QPONDER_MODEL, else the bundled nano model.")


def data_options(function=None, *, with_split: bool = True, many: bool = False):
    """--data, --dataset, --image-root, --split, --score-range: where the MOS labels come from. With ``many``,
    --data and --split may be repeated (a tuple each)."""
    if function is None:
        return lambda f: data_options(f, with_split=with_split, many=many)
    options = [
        click.option("--data", required=True, multiple=many, type=click.Path(exists=True, dir_okay=False),
                     help="Label file: CSV/JSONL (image, mos[, std, group, split]) or a benchmark's label file."
                     + (" Repeat it to report on several sets." if many else "")),
        click.option("--dataset", type=click.Choice([*GENERIC, *DATASETS]),
                     help="Label-file format (default: detected)."),
        click.option("--image-root", type=click.Path(file_okay=False), help="Folder the image paths are relative to."),
        click.option("--split", multiple=many,
                     help="Keep only rows of this split (e.g. train, val) when the file has one."
                     + (" Give one for all --data files, or one for each, in their order." if many else "")),
        click.option("--score-range", nargs=2, type=float, help="Native MOS range LOW HIGH (needed for csv/jsonl)."),
    ]
    if not with_split:
        del options[3]
    for option in reversed(options):
        function = option(function)
    return function


def read_records(data, dataset, image_root, split, score_range):
    from .data import read_mos

    mos_set = read_mos(data, dataset=dataset, image_root=image_root, split=split,
                       score_range=tuple(score_range) if score_range else None)
    if mos_set.roots_tried and mos_set.image_root != mos_set.roots_tried[0]:
        click.echo(f"{data}: images found in {mos_set.image_root} (not in {mos_set.roots_tried[0]})", err=True)
    missing = [image for image, reason in mos_set.skipped if reason.startswith("missing")]
    unreadable = [(image, reason) for image, reason in mos_set.skipped if not reason.startswith("missing")]
    if unreadable:
        click.echo(f"skipped {len(unreadable)} unreadable images (first: {': '.join(unreadable[0])})", err=True)
    if missing:
        message = (f"{data}: {len(missing)} of {len(mos_set) + len(mos_set.skipped)} images not found"
                   f"{', skipped' if len(mos_set) else ''} (first: {missing[0]}; looked in "
                   f"{', '.join(mos_set.roots_tried)}); pass --image-root DIR, the folder the paths in "
                   f"{Path(data).name} are relative to")
        if not len(mos_set):
            raise click.UsageError(message)
        click.echo(message, err=True)
    if not len(mos_set):
        raise click.UsageError(f"{data}: no usable rows")
    return mos_set


def read_sets(data: tuple[str, ...], dataset, image_root, splits: tuple[str, ...], score_range) -> dict:
    """One MOS set per --data file, named by its dataset and split (``agiqa-3k-val``, ``biq2021-test``)."""
    if len(splits) not in (0, 1, len(data)):
        raise click.UsageError(f"{len(splits)} --split values for {len(data)} --data files: give one for all, or "
                               "one for each")
    sets: dict = {}
    for path, split in zip(data, splits if len(splits) == len(data) else (splits or (None,)) * len(data)):
        mos_set = read_records(path, dataset, image_root, split, score_range)
        found = {record.split for record in mos_set}
        label = "-".join([mos_set.name, *(found if len(found) == 1 and None not in found else ())])
        sets[label if label not in sets else f"{label}-{len(sets) + 1}"] = mos_set
    return sets


def training_options(function):
    options = [
        click.option("--config", type=click.Path(exists=True, dir_okay=False), callback=_load_config,
                     is_eager=True, expose_value=False, help="YAML file of option values and trainer `args`."),
        click.option("--lora/--full", default=True, show_default=True, help="LoRA on the language model, or full."),
        click.option("--lora-r", type=int, default=16, show_default=True),
        click.option("--lora-alpha", type=int, default=32, show_default=True),
        click.option("--freeze-vision/--train-vision", default=True, show_default=True),
        click.option("--vision-lr", "vision_learning_rates", type=float, nargs=2, metavar="BLOCKS MERGER",
                     help="Train the vision tower with its own learning rates: its blocks' and its merger's "
                          "(e.g. a pretrained tower's blocks low and its merger higher)."),
        click.option("--arg", "trainer_args", multiple=True, metavar="KEY=VALUE",
                     help="A trainer setting (any SFTConfig/GRPOConfig field), e.g. --arg max_steps=100."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


@click.group()
def train():
    """Fine-tune a reasoning quality scorer on MOS data: distill → sft → grpo → export."""


@train.command()
@data_options
@click.option("--teacher-model", help="Teacher checkpoint (hub id, folder, or server model name).")
@click.option("--teacher", default="backend", show_default=True,
              help="Registered teacher: backend (a model on a core backend) or measured (no model).")
@click.option("--backend", default="transformers", show_default=True, help="Core backend the teacher runs on.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="JSONL output (appended; resumable).")
@click.option("--tolerance", type=float, default=0.5, show_default=True,
              help="Drop samples whose teacher score is further than this from the MOS (1–5 scale).")
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--workers", type=int, default=1, show_default=True, help="Concurrent batches (server teachers).")
@click.option("--max-new-tokens", type=int, default=512, show_default=True)
@click.option("--limit", type=int, help="Distill at most this many new samples.")
@click.option("--teacher-prompt", help="Prompt template with a {mos} placeholder (default: the expert prompt).")
def distill(data, dataset, image_root, split, score_range, teacher_model, teacher, backend, out, tolerance,
            batch_size, workers, max_new_tokens, limit, teacher_prompt):
    """Have a teacher write reasoning for MOS-labelled images (the cold-start SFT set)."""
    from .distill import distill as run
    from .registry import get_teachers

    records = read_records(data, dataset, image_root, split, score_range)
    teachers = get_teachers()
    if teacher not in teachers:
        raise click.UsageError(f"unknown teacher {teacher!r}; registered: {', '.join(sorted(teachers))}")
    if teacher == "backend" and not teacher_model:
        raise click.UsageError("--teacher-model is required for the backend teacher")
    options = {"prompt": teacher_prompt} if teacher_prompt else {}
    instance = teachers[teacher](teacher_model, backend=backend, max_new_tokens=max_new_tokens, **options)
    try:
        stats = run(instance, records, out, tolerance=tolerance, batch_size=batch_size, workers=workers,
                    limit=limit)
    finally:
        getattr(instance, "close", lambda: None)()
    click.echo(json.dumps({"out": out, **vars(stats)}))


@train.command()
@click.option("--data", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Distilled JSONL from `qponder train distill`.")
@model_option("Base checkpoint")
@click.option("--output", required=True, type=click.Path(file_okay=False))
@training_options
@click.pass_context
def sft(ctx, data, model, output, lora, lora_r, lora_alpha, freeze_vision, vision_learning_rates, trainer_args):
    """Supervised cold start on distilled reasoning (loss on the completion only)."""
    from trl import SFTConfig

    from .data import MosRecord, to_dataset
    from .distill import read_distilled
    from .trainers import run_sft

    args = _trainer_args(ctx, trainer_args, SFTConfig)
    rows = read_distilled(data)
    if not rows:
        raise click.UsageError(f"{data}: no distilled samples")
    records = [MosRecord(r["image"], r["mos"], r["mos"], None, r["image"], None) for r in rows]
    dataset = to_dataset(records, with_completion=[r["completion"] for r in rows])
    path = run_sft(model, dataset, output, lora=lora, lora_r=lora_r, lora_alpha=lora_alpha,
                   freeze_vision=freeze_vision, vision_learning_rates=vision_learning_rates, args=args)
    click.echo(f"saved {path}")


@train.command()
@data_options
@model_option("SFT checkpoint (or a base model)")
@click.option("--output", required=True, type=click.Path(file_okay=False))
@click.option("--rewards", default="format,accuracy,consistency", show_default=True,
              help="Comma-separated registered rewards; built in: format, accuracy, accuracy_gaussian, consistency, "
                   "rank_fidelity.")
@click.option("--reward-weights", help="Comma-separated weights, one per reward (default: all 1).")
@training_options
@click.pass_context
def grpo(ctx, data, dataset, image_root, split, score_range, model, output, rewards, reward_weights, lora, lora_r,
         lora_alpha, freeze_vision, vision_learning_rates, trainer_args):
    """GRPO with score-accuracy and reasoning-consistency rewards."""
    from trl import GRPOConfig

    from .data import to_dataset
    from .trainers import run_grpo

    args = _trainer_args(ctx, trainer_args, GRPOConfig)
    records = read_records(data, dataset, image_root, split, score_range)
    weights = [float(w) for w in reward_weights.split(",")] if reward_weights else None
    try:
        path = run_grpo(model, to_dataset(list(records)), output, rewards=rewards.split(","),
                        reward_weights=weights, lora=lora, lora_r=lora_r, lora_alpha=lora_alpha,
                        freeze_vision=freeze_vision, vision_learning_rates=vision_learning_rates, args=args)
    except (KeyError, ValueError) as exc:
        raise click.UsageError(str(exc).strip("'\"")) from exc
    click.echo(f"saved {path}")


@train.command("run")
@data_options(with_split=False)
@model_option("Base checkpoint")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run folder (rerun to resume).")
@click.option("--config", type=click.Path(exists=True, dir_okay=False), callback=_load_config, is_eager=True,
              expose_value=False, help="YAML of option values, plus `sft_args:` and `grpo_args:` trainer fields.")
@click.option("--teacher", default="measured", show_default=True,
              help="Registered teacher for the cold start: measured (no model) or backend (--teacher-model).")
@click.option("--teacher-model", help="The backend teacher's checkpoint (hub id, folder, or server model name).")
@click.option("--val-fraction", type=click.FloatRange(0.01, 0.9), default=0.15, show_default=True,
              help="Share of groups held out when the file has no train/val split.")
@click.option("--lora/--full", default=None, help="Default: LoRA for large models, full for small ones.")
@click.option("--vision-lr", "vision_learning_rates", type=float, nargs=2, metavar="BLOCKS MERGER",
              help="The vision tower's rates (default for small models: 1e-5 1e-4; large ones keep it frozen).")
@click.option("--rewards", help="GRPO's rewards (default for small models: format,accuracy_gaussian,consistency,"
              "rank_fidelity weighted 0.5,1,0.25,1; for large ones: format,accuracy,consistency).")
@click.option("--reward-weights", help="Comma-separated weights, one per reward (default: all 1).")
@click.option("--sft-arg", "sft_pairs", multiple=True, metavar="KEY=VALUE", help="An SFTConfig field.")
@click.option("--grpo-arg", "grpo_pairs", multiple=True, metavar="KEY=VALUE", help="A GRPOConfig field.")
@click.option("--max-new-tokens", type=int, default=512, show_default=True, help="Reasoning budget in the evals.")
@click.pass_context
def run_command(ctx, data, dataset, image_root, score_range, model, out, teacher, teacher_model, val_fraction, lora,
                vision_learning_rates, rewards, reward_weights, sft_pairs, grpo_pairs, max_new_tokens):
    """Fine-tune in one command: distill → SFT → GRPO → export, with the base model and each stage evaluated on a
    held-out split and a before/after table. Rerun the same command to resume; finished stages are skipped."""
    from trl import GRPOConfig, SFTConfig

    from .pipeline import Run, RunSettings
    from .registry import get_teachers

    sft_args = _trainer_args(ctx, sft_pairs, SFTConfig, key="sft_args")
    grpo_args = _trainer_args(ctx, grpo_pairs, GRPOConfig, key="grpo_args")
    teachers = get_teachers()
    if teacher not in teachers:
        raise click.UsageError(f"unknown teacher {teacher!r}; registered: {', '.join(sorted(teachers))}")
    if teacher == "backend" and not teacher_model:
        raise click.UsageError("--teacher-model is required for the backend teacher")
    records = read_records(data, dataset, image_root, None, score_range)
    settings = RunSettings(teacher=teacher, teacher_model=teacher_model, val_fraction=val_fraction, lora=lora,
                           vision_learning_rates=vision_learning_rates,
                           rewards=tuple(rewards.split(",")) if rewards else None,
                           reward_weights=tuple(float(w) for w in reward_weights.split(",")) if reward_weights
                           else None, sft_args=sft_args, grpo_args=grpo_args, max_new_tokens=max_new_tokens)
    instance = teachers[teacher](teacher_model)
    try:
        summary = Run(records, model, out, settings, instance, say=lambda text: click.echo(text, err=True))()
    except (KeyError, ValueError) as exc:
        raise click.UsageError(str(exc).strip("'\"")) from exc
    finally:
        getattr(instance, "close", lambda: None)()
    _print_table(summary)
    click.echo(json.dumps(summary))


def _print_table(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{summary['model']} on {summary['val']} held-out images (trained on {summary['train']})")
    for column in ("stage", "SRCC", "PLCC", "parse failures", "n"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for row in summary["table"]:
        cells = [row["srcc"], row["plcc"], row["parse_failures"]]
        table.add_row(row["stage"], *("—" if v is None else f"{v:.3f}" for v in cells), str(row["n"]))
    Console(stderr=True).print(table)


@train.command("export")
@click.argument("checkpoint", type=click.Path(exists=True, file_okay=False))
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--base-model", help="Base model of a LoRA adapter (default: from its adapter_config.json).")
@click.option("--card", "card_path", type=click.Path(exists=True, dir_okay=False),
              help="JSON with model-card facts (data, settings, metrics), e.g. an eval report.")
@click.option("--overwrite", is_flag=True, help="Write into a non-empty OUT folder.")
def export_command(checkpoint, out, base_model, card_path, overwrite):
    """Write a standalone checkpoint (LoRA merged) with a model card, loadable by every backend."""
    from .export import export

    card = json.loads(Path(card_path).read_text()) if card_path else None
    click.echo(f"exported {export(checkpoint, out, base_model=base_model, card=card, overwrite=overwrite)}")


@click.command("eval")
@data_options(many=True)
@model_option("Checkpoint to evaluate")
@click.option("--backend", help="Core backend (default: transformers).")
@click.option("--profile", help="Model profile (default: from the checkpoint).")
@click.option("--out", default="eval", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the JSON report and the scatter plot.")
@click.option("--name", default="eval", show_default=True, help="Base name of the report files.")
@click.option("--think/--no-think", default=True, show_default=True)
@click.option("-n", "--samples", type=click.IntRange(min=1), default=1, show_default=True,
              help="Score each image as the mean of n samples.")
@click.option("--temperature", type=float, default=1.0, show_default=True)
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--max-new-tokens", type=int, default=512, show_default=True)
def eval_command(data, dataset, image_root, split, score_range, model, backend, profile, out, name, think, samples,
                 temperature, batch_size, max_new_tokens):
    """Score labelled sets and report SRCC, KRCC, PLCC (raw and after a logistic fit), RMSE, parse failures: one
    report and plot per set (``NAME-SET``, or ``NAME`` for a single set)."""
    from qponder_plugin.default_plugins.commands import with_progress
    from qponder_plugin.scorer import Scorer

    from .evaluate import evaluate

    sets = read_sets(data, dataset, image_root, split, score_range)
    names = {label: name if len(sets) == 1 else f"{name}-{label}" for label in sets}
    with Scorer(model, backend=backend, profile=profile, batch_size=batch_size,
                max_new_tokens=max_new_tokens) as scorer:
        reports = {label: evaluate(scorer, list(records), out, think=think, n=samples, temperature=temperature,
                                   name=names[label], progress=with_progress)
                   for label, records in sets.items()}
    if len(sets) == 1:
        click.echo(json.dumps(next(iter(reports.values()))["metrics"], indent=2))
    else:
        click.echo(json.dumps({label: {**report["metrics"], "parse_failure_rate": report["parse_failure_rate"]}
                               for label, report in reports.items()}, indent=2))
    for label, base in names.items():
        click.echo(f"{label + ' ' if len(sets) > 1 else ''}report: {Path(out) / (base + '.json')}  "
                   f"plot: {Path(out) / (base + '.png')}")

"""Export a trained checkpoint as a standalone model folder that transformers, vLLM and qponder_plugin load.

A LoRA (peft) checkpoint is merged into its base model; a full checkpoint is re-saved as safetensors (which also
drops trainer state such as optimizer files). The folder gets the processor, a ``qponder.json`` naming the profile,
and a generated ``README.md`` model card. torch, transformers and peft are imported inside the functions.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from qponder_plugin.spec import FAMILIES, MODEL_CARD

ADAPTER_CONFIG = "adapter_config.json"
NOT_RECORDED = "not recorded"
DEFAULT_TAGS = ("image-quality-assessment", "qponder", "reasoning", "visual-quality")  # and the model's family
_METRIC_COLUMNS = (("srcc", "SRCC"), ("plcc", "PLCC"), ("krcc", "KRCC"), ("rmse", "RMSE"),
                   ("plcc_raw", "PLCC (raw)"), ("parse_failure_rate", "parse failures"), ("n", "n"))


class ExportError(RuntimeError):
    """The export could not be made (bad input, or an output folder that must not be written)."""


def is_adapter(checkpoint: str | os.PathLike) -> bool:
    """True if ``checkpoint`` is a local folder holding a peft adapter."""
    return (Path(checkpoint) / ADAPTER_CONFIG).is_file()


def _same_or_inside(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def _check_out_dir(out_dir: Path, inputs: list[str], overwrite: bool) -> None:
    target = out_dir.resolve()
    for source in inputs:
        if source and Path(source).exists() and _same_or_inside(Path(source).resolve(), target):
            raise ExportError(f"refusing to export into {out_dir}: it is (or contains) the input {source}")
    if target.exists() and not target.is_dir():
        raise ExportError(f"{out_dir} exists and is not a folder")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise ExportError(f"{out_dir} is not empty; pass overwrite=True to replace its contents")


def _load_processor(candidates: list[str]):
    from transformers import AutoProcessor

    problems = []
    for source in candidates:
        if not source:
            continue
        try:
            return AutoProcessor.from_pretrained(source)
        except Exception as exc:  # noqa: BLE001 - try the next candidate, report all at the end
            problems.append(f"{source}: {type(exc).__name__}: {exc}")
    raise ExportError("no processor found; tried " + "; ".join(problems))


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def _base_of(checkpoint: str, base_model) -> str | None:
    """The base model an adapter applies to (``base_model`` wins); None for a full checkpoint without one."""
    if base_model is not None:
        return os.fspath(base_model)
    if not is_adapter(checkpoint):
        return None
    base = _read_json(Path(checkpoint) / ADAPTER_CONFIG).get("base_model_name_or_path")
    if not base:
        raise ExportError(f"{checkpoint} is an adapter without base_model_name_or_path; pass base_model=...")
    return base


def load_merged(checkpoint: str | os.PathLike, *, base_model=None, dtype="auto"):
    """``(model, processor)`` for a full checkpoint, or for a peft adapter merged into its base."""
    from transformers import AutoModelForImageTextToText

    checkpoint = os.fspath(checkpoint)
    if is_adapter(checkpoint):
        from peft import PeftModel

        model = AutoModelForImageTextToText.from_pretrained(_base_of(checkpoint, base_model), dtype=dtype)
        model = PeftModel.from_pretrained(model, checkpoint).merge_and_unload()
    else:
        model = AutoModelForImageTextToText.from_pretrained(checkpoint, dtype=dtype)
    processor = _load_processor([checkpoint, _base_of(checkpoint, base_model) or ""])
    if getattr(processor, "image_processor", None) is None:
        raise ExportError(f"{checkpoint}: got a bare tokenizer, not a multimodal processor (install torchvision)")
    return model, processor


def export(checkpoint: str | os.PathLike, out_dir: str | os.PathLike, *, base_model: str | os.PathLike | None = None,
           card: Mapping | None = None, overwrite: bool = False, dtype: str = "auto") -> Path:
    """Write a standalone model folder for ``checkpoint`` to ``out_dir`` and return its path.

    - A peft adapter (a folder with ``adapter_config.json``) is applied to its base model (``base_model``, or the
      adapter config's ``base_model_name_or_path``) loaded with ``AutoModelForImageTextToText``, merged
      (``merge_and_unload``) and saved as safetensors.
    - Anything else is loaded as a full model and re-saved as safetensors.
    - The processor comes from the checkpoint, falling back to the base model.
    - ``qponder.json`` gets ``{"profile": "qponder", ...}`` (``card["profile"]`` overrides the profile); fields of a
      ``qponder.json`` already in the checkpoint are kept unless overridden.
    - ``README.md`` is a model card built from ``card``: keys ``data``, ``settings``, ``metrics`` (a metrics dict,
      an :func:`~qponder_plugin.training.evaluate.evaluate` report, or a mapping of eval name to either),
      ``limits``; optional ``name``, ``description``, ``license``, ``tags`` (the model's family, such as
      ``qwen3-vl``, is one), ``weights`` (how a model without a base was made), ``variants`` (lines on what was tried
      and lost). Missing sections say "not recorded".

    The input checkpoint is never modified or deleted. A non-empty ``out_dir`` is refused unless
    ``overwrite=True``; the folder is built next to it and swapped in only when complete. ``dtype`` is passed to
    ``from_pretrained`` (``"auto"`` keeps the stored dtype).
    """
    checkpoint = os.fspath(checkpoint)
    out = Path(out_dir)
    adapter = is_adapter(checkpoint)
    base = _base_of(checkpoint, base_model)
    _check_out_dir(out, [checkpoint, base or ""], overwrite)
    model, processor = load_merged(checkpoint, base_model=base, dtype=dtype)
    info = _read_json(Path(checkpoint) / MODEL_CARD) if Path(checkpoint).is_dir() else {}
    if not adapter:  # a full checkpoint does not know its base: take it from the caller or an earlier export
        base = base or info.get("base_model")

    card = dict(card or {})
    card["tags"] = [FAMILIES.get(model.config.model_type, model.config.model_type), *card.get("tags", ())]
    info.update({"profile": card.get("profile", info.get("profile", "qponder")), "base_model": base,
                 "source_checkpoint": checkpoint, "merged_adapter": adapter})
    if card.get("name"):
        info["name"] = card["name"]
    metrics = _metric_rows(card.get("metrics"))
    if metrics:
        info["metrics"] = {name: {k: _clean(v) for k, v in values.items()} for name, values in metrics}

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        model.save_pretrained(staging)
        # batched generation pads on the left, whatever training left; init_kwargs is what save_pretrained writes
        processor.tokenizer.padding_side = processor.tokenizer.init_kwargs["padding_side"] = "left"
        processor.save_pretrained(staging)
        image_processor = getattr(processor, "image_processor", None)
        if image_processor is not None and not (staging / "preprocessor_config.json").exists():
            image_processor.save_pretrained(staging)  # the file transformers 4.x (and vLLM pinned to it) reads
        (staging / MODEL_CARD).write_text(json.dumps(info, indent=2) + "\n")
        (staging / "README.md").write_text(model_card(card, base_model=base, out_name=out.name, adapter=adapter,
                                                      profile=info["profile"]))
        _default_modes(staging)
        if out.exists():
            shutil.rmtree(out)  # only reached when empty or overwrite=True, and never an input (checked above)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _default_modes(folder: Path) -> None:
    """Give ``folder`` and its files the modes a plain ``mkdir`` and ``open`` would (under the umask), in place of
    the owner-only ones of ``mkdtemp`` and of some writers, so an export on a shared server is readable by others."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [folder, *folder.rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _metric_values(entry: Mapping) -> dict:
    """The table's metrics from a metrics dict or from an evaluate report (``{"metrics": {...}, ...}``)."""
    columns = dict(_METRIC_COLUMNS)
    if isinstance(entry.get("metrics"), Mapping):  # a report: its top-level "n" is samples per image, not pairs
        values = {k: v for k, v in entry["metrics"].items() if k in columns}
        if "parse_failure_rate" in entry:
            values["parse_failure_rate"] = entry["parse_failure_rate"]
        return values
    return {k: v for k, v in entry.items() if k in columns}


def _metric_rows(metrics) -> list[tuple[str, dict]]:
    """Normalise ``card["metrics"]`` into ``[(eval name, {metric: value})]``.

    Accepts one metrics dict, one evaluate report, or a mapping of eval name to either.
    """
    if not isinstance(metrics, Mapping) or not metrics:
        return []
    if isinstance(metrics.get("metrics"), Mapping) or any(key in metrics for key, _ in _METRIC_COLUMNS):
        name = str(metrics.get("name") or "eval")
        if metrics.get("mode"):
            name = f"{name} ({metrics['mode']})"
        return [(name, _metric_values(metrics))]
    return [(str(name), _metric_values(entry)) for name, entry in metrics.items() if isinstance(entry, Mapping)]


def _format_value(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _section(value) -> str:
    if value is None or value == "" or value == {} or value == []:
        return f"_{NOT_RECORDED}_"
    if isinstance(value, Mapping):
        return "\n".join(f"- **{key}**: {json.dumps(item) if isinstance(item, (list, dict)) else _format_value(item)}"
                         for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return "\n".join(f"- {item}" for item in value)
    return str(value)


def _yaml_scalar(value) -> str:
    return json.dumps(str(value), ensure_ascii=False)  # a JSON string is a valid YAML scalar


def model_card(card: Mapping | None, *, base_model: str | None, out_name: str = "model", adapter: bool = False,
               profile: str = "qponder") -> str:
    """The ``README.md`` text for an exported model (Hugging Face model card with YAML front matter)."""
    card = dict(card or {})
    name = card.get("name") or out_name
    tags = list(dict.fromkeys([*DEFAULT_TAGS, *card.get("tags", ())]))
    front = ["---"]
    if base_model:
        front.append(f"base_model: {_yaml_scalar(base_model)}")
    front.append("library_name: transformers")
    front.append("pipeline_tag: image-text-to-text")
    if card.get("license"):
        front.append(f"license: {_yaml_scalar(card['license'])}")
    front.append("tags:")
    front += [f"- {_yaml_scalar(tag)}" for tag in tags]
    front.append("---")

    rows = _metric_rows(card.get("metrics"))
    if rows:
        table = ["| eval | " + " | ".join(label for _, label in _METRIC_COLUMNS) + " |",
                 "|---|" + "---|" * len(_METRIC_COLUMNS)]
        table += [f"| {eval_name} | " + " | ".join(_format_value(values.get(key)) for key, _ in _METRIC_COLUMNS)
                  + " |" for eval_name, values in rows]
        metrics_text = ("PLCC and RMSE are after the VQEG 4-parameter logistic fit; PLCC (raw) is before it. "
                        "Parse failures: share of answers without a readable score.\n\n" + "\n".join(table))
    else:
        metrics_text = f"_{NOT_RECORDED}_"

    if base_model:
        base_text = f"`{base_model}`"
        how = f"LoRA adapter merged into `{base_model}`" if adapter else f"full fine-tune of `{base_model}`"
    else:  # a model trained from scratch says so in card["weights"]
        base_text = "none" if card.get("weights") else NOT_RECORDED
        how = card.get("weights") or NOT_RECORDED
    description = card.get("description") or (
        "A reasoning-based image quality scorer in the Q-Ponder format: the model reasons about the image inside "
        "`<think> </think>` and gives one score from 1 (very poor) to 5 (excellent) inside `<answer> </answer>`.")
    body = f"""
# {name}

{description}

- Base model: {base_text}
- Weights: {how}
- Answer profile: `{profile}` (declared in `qponder.json`)

## Data

{_section(card.get("data"))}

## Training settings

{_section(card.get("settings"))}

## Evaluation

{metrics_text}

## Usage

With `qponder_plugin` (`pip install "qponder-plugin[transformers]"`):

```python
from qponder_plugin import load_scorer

with load_scorer("path/to/{out_name}") as scorer:
    result = scorer.assess("photo.jpg")
    print(result.score, result.reasoning)
```

```bash
qponder assess photos/ --model path/to/{out_name}
qponder assess photos/ --model path/to/{out_name} --no-think   # score only, one forward pass
```

The folder is a plain transformers checkpoint (safetensors, processor included), so
`AutoModelForImageTextToText.from_pretrained` and vLLM load it directly.

## Limits

{_section(card.get("limits"))}
"""
    if card.get("variants"):  # what was tried and lost, one line each
        body += f"\n## Variants tried\n\n{_section(card['variants'])}\n"
    return "\n".join(front) + "\n" + body

"""SFT (cold start) and GRPO on trl + peft.

Both load a checkpoint (a full model, or a LoRA adapter, merged on load), freeze the vision tower or train it (at
the language model's rate, or at rates of its own: ``vision_learning_rates``), and save a standalone checkpoint with
the LoRA merged (the adapter itself is kept in ``adapter/``), so each stage's output feeds the next stage and every
backend as it is. LoRA goes on the language model only (attention, Qwen3.5's linear attention, MLP): a bare suffix
list such as ``q_proj`` would also match the vision MLP.
Prompts are the scorer's own (the core's ``chat_text``): SFT trains on exactly the text the scorer will send, and
GRPO generates with reasoning switched on, so a template that opens ``<think>`` itself (Qwen3-VL Thinking, Qwen3.5)
is trained as it is used.
Trainer settings come from ``args`` (any ``SFTConfig`` / ``GRPOConfig`` field) over our defaults: CPU float32
here, bf16 on a CUDA GPU. Multi-GPU is accelerate's job: ``accelerate launch -m qponder_plugin train sft ...``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from qponder_plugin.backend import Request
from qponder_plugin.default_plugins.profiles import QPONDER
from qponder_plugin.spec import MODEL_CARD

from .rewards import completion_text

LORA_TARGETS = (r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|in_proj_qkv|in_proj_z|out_proj|gate_proj|up_proj"
                r"|down_proj)")


def load_policy(checkpoint: str | Path, *, freeze_vision: bool = True):
    """Model and processor from a checkpoint folder or hub id (a LoRA adapter is merged into its base), in bf16 on
    a CUDA GPU that supports it, else float32. A bare tokenizer in place of the processor is an error: trl would
    quietly train text-only."""
    import torch

    from .export import load_merged

    dtype = torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    model, processor = load_merged(checkpoint, dtype=dtype)
    if freeze_vision:
        for parameter in vision_tower(model).parameters():
            parameter.requires_grad = False
    return model, processor


def vision_tower(model):
    """The vision encoder of a multimodal model (Qwen2.5-VL's ``visual``, or its peers' names), under peft too."""
    model = model.get_base_model() if hasattr(model, "get_base_model") else model
    for name in ("visual", "vision_tower", "vision_model"):
        for owner in (model, getattr(model, "model", None)):
            if owner is not None and hasattr(owner, name):
                return getattr(owner, name)
    raise AttributeError(f"{type(model).__name__} has no vision tower")


def is_merger(name: str) -> bool:
    """Whether a tower parameter belongs to a merger: ``merger.…``, or Qwen3-VL's ``deepstack_merger_list.…`` that
    feed intermediate blocks to the language model."""
    return any(part in ("merger", "deepstack_merger_list") for part in name.split("."))


def tower_parts(tower) -> tuple[list, list]:
    """The vision tower's parameters outside its mergers (patch embedding and blocks), and its mergers'. By name, so
    the trainable copy inside a peft wrapper counts too."""
    named = list(tower.named_parameters())
    return [p for n, p in named if not is_merger(n)], [p for n, p in named if is_merger(n)]


def vision_rate_optimizer(trainer, blocks_rate: float, merger_rate: float):
    """An AdamW for ``trainer.model`` in which the vision tower's blocks and its merger have learning rates of their
    own, and everything else keeps the trainer's; betas, epsilon and weight decay (not on biases and norms) come from
    the trainer's args. The trainer's schedule then scales every group alike."""
    import torch

    model, args = trainer.model, trainer.args
    blocks, merger = tower_parts(vision_tower(model))
    rates = {**{id(p): blocks_rate for p in blocks}, **{id(p): merger_rate for p in merger}}
    decayed = set(trainer.get_decay_parameter_names(model))
    groups: dict[tuple[float, bool], list] = {}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            groups.setdefault((rates.get(id(parameter), args.learning_rate), name in decayed), []).append(parameter)
    return torch.optim.AdamW([{"params": params, "lr": rate, "weight_decay": args.weight_decay if decay else 0.0}
                              for (rate, decay), params in groups.items()],
                             betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon)


def _policy(checkpoint, lora: bool, lora_r: int, lora_alpha: int, freeze_vision: bool, vision_learning_rates):
    """Model, processor and peft config of a stage; rates of the tower's own imply that it trains."""
    freeze_vision = freeze_vision and vision_learning_rates is None
    model, processor = load_policy(checkpoint, freeze_vision=freeze_vision)
    return model, processor, lora_config(lora_r, lora_alpha, train_vision=not freeze_vision) if lora else None


def _with_vision_rates(trainer, rates: tuple[float, float] | None):
    if rates is not None:  # the Trainer keeps an optimizer it is given and builds its schedule on it
        trainer.optimizer = vision_rate_optimizer(trainer, *rates)
    return trainer


def save_with_card(model, processor, output_dir: str | Path, source: str | Path) -> Path:
    """Save ``model`` and ``processor`` to ``output_dir`` with the ``qponder.json`` of the checkpoint they came from."""
    output_dir = Path(output_dir)
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    card = Path(source) / MODEL_CARD
    if card.is_file():
        (output_dir / card.name).write_text(card.read_text())
    return output_dir


def lora_config(r: int = 16, alpha: int = 32, dropout: float = 0.05, *, train_vision: bool = False):
    """LoRA on the language model; a vision tower that trains is fully trained beside it (``modules_to_save``), since
    peft freezes everything outside the adapter."""
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=LORA_TARGETS, task_type="CAUSAL_LM",
                      modules_to_save=["visual"] if train_vision else None)


def trainer_defaults() -> dict:
    import torch

    cuda = torch.cuda.is_available()
    return {"bf16": cuda and torch.cuda.is_bf16_supported(), "use_cpu": not cuda, "report_to": [],
            "gradient_checkpointing": cuda, "save_strategy": "no", "logging_steps": 1,
            "remove_unused_columns": False, "seed": 0}


def _finish(trainer, processor, output_dir: Path, lora: bool) -> Path:
    """Save a standalone checkpoint (LoRA merged in) that every backend loads; the adapter stays in ``adapter/``."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    if lora:
        model.save_pretrained(str(output_dir / "adapter"))
        model = model.merge_and_unload()
    model.save_pretrained(str(output_dir))
    processor.save_pretrained(str(output_dir))
    (output_dir / "training_log.json").write_text(json.dumps(trainer.state.log_history, indent=1))
    (output_dir / MODEL_CARD).write_text(json.dumps({"profile": QPONDER.name, "lora": lora}))
    return output_dir


def sft_texts(processor):
    """A ``with_transform`` function that turns ``data.to_dataset`` rows (conversational, image paths) into the text
    the scorer sends (``chat_text``, reasoning on) and the answer after it: without the ``<think>`` that a template
    opened, and ended by the end-of-turn token. Images are decoded on access."""
    from qponder_plugin.default_plugins.transformers_backend import chat_text, opens_think

    from .data import load_images

    def transform(batch: dict) -> dict:
        out = load_images(batch)
        out["prompt"] = [chat_text(processor, Request(images[0], completion_text(turn)))
                         for images, turn in zip(out["images"], batch["prompt"])]
        opened = ["<think>" if opens_think(prompt) else "" for prompt in out["prompt"]]
        out["completion"] = [completion_text(answer).removeprefix(start) + processor.tokenizer.eos_token
                             for start, answer in zip(opened, batch["completion"])]
        return out

    return transform


def run_sft(checkpoint, train_dataset, output_dir, *, lora: bool = True, lora_r: int = 16, lora_alpha: int = 32,
            freeze_vision: bool = True, vision_learning_rates: tuple[float, float] | None = None,
            args: dict | None = None) -> Path:
    """Cross-entropy on the completions only; ``train_dataset`` comes from ``data.to_dataset(...,
    with_completion=...)`` (image paths, decoded on access; the prompts as the scorer writes them: ``sft_texts``).
    ``vision_learning_rates`` (blocks, merger) trains the vision tower at those rates whatever ``freeze_vision``
    says. Returns the output folder."""
    from trl import SFTConfig, SFTTrainer

    output_dir = Path(output_dir)
    model, processor, peft_config = _policy(checkpoint, lora, lora_r, lora_alpha, freeze_vision, vision_learning_rates)
    train_dataset = train_dataset.with_transform(sft_texts(processor))
    config = SFTConfig(output_dir=str(output_dir), **{**trainer_defaults(), "completion_only_loss": True,
                                                      "max_length": None, **(args or {})})
    trainer = SFTTrainer(model=model, args=config, train_dataset=train_dataset, processing_class=processor,
                         peft_config=peft_config)
    _with_vision_rates(trainer, vision_learning_rates).train()
    return _finish(trainer, processor, output_dir, lora)


def resolve_rewards(names: list[str], weights: list[float] | None = None) -> tuple[list, list[float]]:
    """Reward callables by registered name, with their weights (default 1 each)."""
    from .registry import get_rewards

    registry = get_rewards()
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise KeyError(f"unknown reward(s) {', '.join(unknown)}; registered: {', '.join(sorted(registry))}")
    weights = list(weights) if weights else [1.0] * len(names)
    if len(weights) != len(names):
        raise ValueError(f"{len(names)} rewards but {len(weights)} weights")
    return [registry[n] for n in names], weights


def build_grpo(checkpoint, train_dataset, output_dir, *, rewards=("format", "accuracy", "consistency"),
               reward_weights=None, lora: bool = True, lora_r: int = 16, lora_alpha: int = 32,
               freeze_vision: bool = True, vision_learning_rates: tuple[float, float] | None = None,
               args: dict | None = None):
    """A ready ``trl.GRPOTrainer`` on ``data.to_dataset(...)`` rows, with our rewards bound to it (``bind(trainer)``
    for model-based rewards such as ``consistency``). It generates with reasoning on (``enable_thinking`` where the
    template takes it). ``vision_learning_rates`` as in ``run_sft``."""
    from trl import GRPOConfig, GRPOTrainer

    from qponder_plugin.default_plugins.transformers_backend import thinking_switch

    from .data import load_images

    def with_pixels(batch: dict) -> dict:  # decode images on access; keep the path as the rewards' image identity
        return {**load_images(batch), "image_path": batch["image"]}

    train_dataset = train_dataset.with_transform(with_pixels)
    reward_funcs, weights = resolve_rewards(list(rewards), reward_weights)
    # A reward bound to a trainer holds its model: give this trainer its own copy of the registered instance.
    reward_funcs = [copy.copy(r) if hasattr(r, "bind") else r for r in reward_funcs]
    model, processor, peft_config = _policy(checkpoint, lora, lora_r, lora_alpha, freeze_vision, vision_learning_rates)
    # trl pads the prompts on the left to generate, but asks the processor for the image-token types with its own
    # padding side: on the right, prompts of different lengths (images of different sizes) get misplaced types and
    # the forward pass fails (a rope-index shape mismatch). Left everywhere keeps them aligned.
    processor.tokenizer.padding_side = "left"
    # Two or more images per step, so rank_fidelity has something to rank against.
    settings = {**trainer_defaults(), "num_generations": 4, "per_device_train_batch_size": 8,
                "max_completion_length": 256, "temperature": 1.0, "beta": 0.04,
                "chat_template_kwargs": thinking_switch(processor, True), **(args or {})}
    config = GRPOConfig(output_dir=str(output_dir), reward_weights=weights, **settings)
    trainer = GRPOTrainer(model=model, reward_funcs=reward_funcs, args=config, train_dataset=train_dataset,
                          processing_class=processor, peft_config=peft_config)
    for reward in reward_funcs:
        if hasattr(reward, "bind"):
            reward.bind(trainer)
    return _with_vision_rates(trainer, vision_learning_rates), processor


def run_grpo(checkpoint, train_dataset, output_dir, **options) -> Path:
    """GRPO from an SFT checkpoint or a base model; per-reward means are logged by trl (rewards/<name>/mean)."""
    trainer, processor = build_grpo(checkpoint, train_dataset, output_dir, **options)
    trainer.train()
    return _finish(trainer, processor, Path(output_dir), options.get("lora", True))

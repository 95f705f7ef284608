"""The runtime: what runs a round. ``messages`` (what travels), ``server`` (the round loop, pure),
``transport`` (how tasks reach clients), ``validation`` (what the server accepts), and the torch
side: ``lora`` (the model with its named adapter), ``training`` (steps and optimisers), ``client``
(local training and scoring), ``evaluation``, ``measure`` (a training step's real peak memory)."""

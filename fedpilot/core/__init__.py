"""The pure core: names, settings, errors, registries and sizes. Imports nothing heavy (no torch).

Everything above it (planning, strategies, families, runtime, drivers) speaks these words:

- ``keys``: LoRA module identities ``"<layer>.<target>"`` and tensor keys ``"<module>/<part>"``;
- ``tensors``: :data:`TensorDict`, named numpy arrays, the currency between client and server;
- ``settings``: the strict pydantic base of every settings block and its one-line errors;
- ``registry``: name -> implementation tables filled by importing a package's modules;
- ``sizes``: memory sizes as people write them;
- ``errors``: the errors a user can fix, shown as one line.
"""

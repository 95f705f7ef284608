"""Federated strategies by name: what each client trains this round, and how the server aggregates.

Each module of this package registers one strategy with ``@STRATEGIES.register("name")`` and declares
what it is in ``capabilities`` (:class:`~fedpilot.strategies.base.Capabilities`).
"""

from __future__ import annotations

from fedpilot.core.registry import Registry, import_submodules
from fedpilot.strategies.base import (
    Assignment,
    Capabilities,
    ClientInfo,
    ClientScores,
    ClientUpdate,
    FederationContext,
    Strategy,
    accepted_options,
)

STRATEGIES: Registry[type[Strategy]] = Registry("strategy")

import_submodules(__name__)

__all__ = [
    "STRATEGIES", "Assignment", "Capabilities", "ClientInfo", "ClientScores", "ClientUpdate", "FederationContext", "Strategy",
    "accepted_options",
]

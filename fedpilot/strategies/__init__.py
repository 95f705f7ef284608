"""Federated strategies by name: what each client trains this round, and how the server aggregates.

Each module of this package registers one strategy with ``@STRATEGIES.register("name")``.
"""

from __future__ import annotations

from fedpilot.core.registry import Registry, import_submodules
from fedpilot.strategies.base import Assignment, ClientInfo, ClientScores, ClientUpdate, FederationContext, Strategy

STRATEGIES: Registry[type[Strategy]] = Registry("strategy")

import_submodules(__name__)

__all__ = ["STRATEGIES", "Assignment", "ClientInfo", "ClientScores", "ClientUpdate", "FederationContext", "Strategy"]

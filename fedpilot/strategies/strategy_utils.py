"""Kept for :mod:`fedpilot.runtime.server`, which imports :func:`server_step` from here: the helpers
that lived in this module are now in :mod:`~fedpilot.strategies.aggregation_utils`,
:mod:`~fedpilot.strategies.compensation` and :mod:`~fedpilot.strategies.server_step`."""

from __future__ import annotations

from fedpilot.strategies.server_step import server_step

__all__ = ["server_step"]

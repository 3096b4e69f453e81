"""Deadlines, SLOs and the degradation ladder: every request answered within its deadline by
the best rung that can, stepping down on breaches, errors and hangs, and back up with
hysteresis when health returns."""

from .ladder import Ladder, LadderConfig, Served
from .rungs import CacheRung, DefaultRung, ModelRung, NeighbourRung, Rung

__all__ = ["CacheRung", "DefaultRung", "Ladder", "LadderConfig", "ModelRung", "NeighbourRung", "Rung", "Served"]

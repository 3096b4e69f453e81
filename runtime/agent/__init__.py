"""The device agent (``edgeloop run``): sources → ladder → decisions → sinks."""

from .agent import Agent
from .config import AgentConfig, load_config

__all__ = ["Agent", "AgentConfig", "load_config"]

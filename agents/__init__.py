"""Faust agents: transform chain, stateful operators, quality checks, loaders."""

from agents._event import DeadLetter, Event

__all__ = ["DeadLetter", "Event"]

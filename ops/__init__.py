"""Operations: the CLI, the local stack, and (later) the REST API and metrics."""

from ops._cli import main
from ops._stack import Stack, default_home

__all__ = ["Stack", "default_home", "main"]

"""Settings from the environment: the one way a settings model reads its variables."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping


def env_values(names: Iterable[str], prefix: str = "DATAFLOW_",
               environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``{name: value}`` for each ``<prefix><NAME>`` set to something non-empty in
    ``environ`` (default: the process's); a model then validates the values."""
    env = os.environ if environ is None else environ
    return {name: env[f"{prefix}{name.upper()}"] for name in names
            if env.get(f"{prefix}{name.upper()}")}

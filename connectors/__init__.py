"""DataFlow connectors package."""

__all__: list[str] = []

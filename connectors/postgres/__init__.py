"""Postgres: the pgoutput CDC source and the sink; used through ``connectors``."""

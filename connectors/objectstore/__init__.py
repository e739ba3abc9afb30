"""Object storage (S3): the Parquet sink; used through ``connectors``."""

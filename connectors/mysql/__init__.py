"""MySQL/MariaDB: the binlog CDC source; used through ``connectors``."""

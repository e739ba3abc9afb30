"""MongoDB: the sink (FerretDB on the local stack); used through ``connectors``."""

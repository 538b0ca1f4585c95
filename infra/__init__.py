"""Foundation layer: table schemas, run directories and atomic shard storage, typed config
loading, the stage protocol, the DuckDB catalog (later: cluster manifests, accelerator
detection).
"""

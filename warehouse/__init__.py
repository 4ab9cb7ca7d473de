"""The rollout warehouse: hive-partitioned Parquet, atomic stage commits, DuckDB views. Free of torch and Prefect."""

from warehouse.store import StageCommit, Warehouse

__all__ = ["StageCommit", "Warehouse"]

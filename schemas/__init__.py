"""Pydantic models: the run configuration and one row model per warehouse table (Arrow schemas derive from them)."""

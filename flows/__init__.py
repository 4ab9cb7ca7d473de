"""Prefect flows that compose the stage tasks, and the `hicra` command line."""

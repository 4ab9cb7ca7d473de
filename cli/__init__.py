"""The `hicra` command line: one module per command group, each with `add_parsers(sub)`; `cli.main` builds them.

The top layer: it imports flows, tasks, warehouse, hicra and schemas, and nothing imports it. Building the parser
imports neither Prefect nor torch (each command imports what it runs on use).
"""

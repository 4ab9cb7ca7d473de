"""One Prefect task per stage: read inputs from the warehouse, call `hicra`, write and commit outputs. Thin.

Also what the flows and the command line share below them: the commit guard (`common`), the local Prefect server and
workers (`prefect_server`)."""

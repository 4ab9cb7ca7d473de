"""One Prefect task per stage: read inputs from the warehouse, call `hicra`, write and commit outputs. Thin."""

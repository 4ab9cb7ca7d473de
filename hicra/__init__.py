"""HICRA: Hierarchy-Aware Credit Assignment (Wang et al., arXiv 2509.03646), the algorithm and the model work.

Free of Prefect and DuckDB: another trainer can import `hicra.core_algos` alone.
"""

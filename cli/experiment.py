"""`hicra experiment --config FILE`: run (or resume) an experiment grid (flows/experiment.py), then print its
final-accuracy table (the full report: `hicra report --experiment NAME`)."""

from __future__ import annotations

import argparse

from cli.common import config_warehouse, prefect_defaults


def cmd_experiment(args: argparse.Namespace) -> int:
    prefect_defaults()
    from flows.experiment import experiment
    from schemas.experiment import load_experiment
    from tasks.common import console
    from warehouse.compare import final_table
    from warehouse.experiments import comparison_data

    warehouse = config_warehouse(args)
    exp = load_experiment(args.config, warehouse)  # a bad file fails here, before Prefect starts
    run_ids = experiment(config_path=args.config, force=args.force, warehouse=warehouse)
    root = next(iter(exp.runs.values())).run.warehouse
    console.print(final_table(comparison_data(root, run_ids), exp.config.baseline))
    console.print(f"Panels and tables: hicra report --experiment {exp.config.name} --warehouse {root}", soft_wrap=True)
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("experiment", help="run (or resume) a grid of methods x seeds (flow hicra-experiment)")
    parser.add_argument("--config", default="configs/experiment.yaml", help="experiment YAML (schemas/experiment.py)")
    parser.add_argument("--force", action="store_true", help="resume runs whose config changed (recorded)")
    parser.add_argument("--warehouse", help="warehouse of every run (default: $HICRA_WAREHOUSE, else the file's)")
    parser.set_defaults(func=cmd_experiment)

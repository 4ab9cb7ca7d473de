"""`hicra experiment --config FILE`: run (or resume) an experiment grid, then print its final-accuracy table."""

from __future__ import annotations

import argparse


def cmd_experiment(args: argparse.Namespace) -> int:
    from flows.cli import _prefect_defaults

    _prefect_defaults()
    from flows.experiment import experiment
    from schemas.experiment import load_experiment
    from tasks.common import console
    from warehouse.compare import final_table
    from warehouse.experiments import comparison_data

    exp = load_experiment(args.config)  # fails here, before Prefect starts, on a bad file
    run_ids = experiment(config_path=args.config, force=args.force)
    root = next(iter(exp.runs.values())).run.warehouse
    console.print(final_table(comparison_data(root, run_ids), exp.config.baseline))
    console.print(f"Plots and tables: hicra report --experiment {exp.config.name} --warehouse {root}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("experiment", help="run (or resume) a grid of methods x seeds (flow hicra-experiment)")
    parser.add_argument("--config", default="configs/experiment.yaml", help="experiment YAML (schemas/experiment.py)")
    parser.add_argument("--force", action="store_true", help="resume runs whose config changed (recorded)")
    parser.set_defaults(func=cmd_experiment)

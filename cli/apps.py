"""The Typer objects every command module decorates: the root ``hep2`` and its command groups."""

from __future__ import annotations

import typer

app = typer.Typer(help="Open HEp-2 IIF (ANA) reader: analysis service, training and evaluation.",
                  no_args_is_help=True)
db_app = typer.Typer(no_args_is_help=True, help="Database schema (Alembic).")
train_app = typer.Typer(no_args_is_help=True, help="Train models.")
evaluate_app = typer.Typer(no_args_is_help=True, help="Evaluate models; writes JSON.")
jobs_app = typer.Typer(no_args_is_help=True, help="Analysis jobs: list failures, re-run, sweep now.")
models_app = typer.Typer(no_args_is_help=True, help="Model registry: list, promote, roll back.")
datasets_app = typer.Typer(no_args_is_help=True, help="Registered training data sets.")
apikey_app = typer.Typer(no_args_is_help=True, help="API keys (stored hashed; the key is printed once).")

GROUPS = {"db": db_app, "train": train_app, "evaluate": evaluate_app, "jobs": jobs_app, "models": models_app,
          "datasets": datasets_app, "apikey": apikey_app}
"""Mounted on ``app`` under these names by :mod:`cli.main`."""

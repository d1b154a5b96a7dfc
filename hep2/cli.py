"""The ``hep2`` command. Each subsystem owns its sub-commands; this module only mounts them."""

from __future__ import annotations

from pathlib import Path

import typer

from api.cli import register as register_api_commands
from db.cli import app as db_app
from training.cli import evaluate_app, train_app
from training.ops_cli import register as register_training_ops
from training.segmentation.cli import register as register_segmentation
from workers.cli import register as register_worker_commands
from workers.pipeline.cli import register as register_pipeline

app = typer.Typer(help="Open HEp-2 IIF (ANA) reader: analysis service, training and evaluation.",
                  no_args_is_help=True)
app.add_typer(db_app, name="db", help="Database schema (Alembic).")
app.add_typer(train_app, name="train", help="Train models.")
app.add_typer(evaluate_app, name="evaluate", help="Evaluate models; writes JSON.")
register_worker_commands(app)  # worker, beat, jobs, bench
register_pipeline(app, evaluate_app)  # analyze, evaluate fields
register_api_commands(app)  # apikey
register_segmentation(train_app, evaluate_app)  # train/evaluate segmentation
register_training_ops(app, train_app)  # train run|status|cancel, models, datasets


@app.command()
def api(host: str = typer.Option("127.0.0.1", help="Interface; 0.0.0.0 in a container."),
        port: int = typer.Option(8000), workers: int = typer.Option(1, help="uvicorn worker processes.")) -> None:
    """Serve the HTTP API (uvicorn)."""
    import uvicorn

    uvicorn.run("api.app:app", host=host, port=port, workers=workers, proxy_headers=True)


@app.command()
def demo(
    input_dir: Path | None = typer.Option(None, "--input", help="Folder of slide images; default: synthetic."),
    state_dir: Path = typer.Option(Path("var/demo"), help="Embedded state (wiped at start)."),
) -> None:
    """Run the main job on embedded defaults: SQLite, local bucket, file broker, a real worker."""
    from hep2.demo import print_report, run_demo

    print_report(run_demo(input_dir, state_dir))


if __name__ == "__main__":
    app()

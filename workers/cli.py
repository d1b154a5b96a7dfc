"""``hep2 worker`` and ``hep2 beat``: Celery's own worker and scheduler with our app and defaults."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    def worker(
        ctx: typer.Context,
        queues: str = typer.Option("gpu,cpu,training", "-Q", "--queues", help="Comma-separated queues."),
        concurrency: int | None = typer.Option(None, "-c", "--concurrency",
                                               help="Processes; default 1 for a GPU worker, else CPU count."),
        loglevel: str = typer.Option("INFO", "-l", "--loglevel"),
    ) -> None:
        """Run a Celery worker (extra options go to ``celery worker``)."""
        from workers.celery_app import QUEUES

        wanted = [q.strip() for q in queues.split(",") if q.strip()]
        unknown = sorted(set(wanted) - set(QUEUES))
        if unknown:
            raise typer.BadParameter(f"unknown queue(s) {unknown}; known: {', '.join(QUEUES)}")
        if concurrency is None and "gpu" in wanted:
            concurrency = 1  # one process owns the GPU; run one worker per GPU to use several
        argv = ["worker", "-Q", ",".join(wanted), "-l", loglevel]
        if concurrency is not None:
            argv += ["-c", str(concurrency)]
        _celery().worker_main(argv + list(ctx.args))

    @app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    def beat(ctx: typer.Context, loglevel: str = typer.Option("INFO", "-l", "--loglevel")) -> None:
        """Run Celery beat (the inbox sweep and other schedules)."""
        _celery().start(["beat", "-l", loglevel, *ctx.args])


def _celery():  # imported late: `hep2 --help` should not connect anything
    from workers.celery_app import celery_app

    return celery_app

"""``hep2 worker`` and ``hep2 beat``: Celery's own worker and scheduler with our app and defaults."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from celery import Celery


def register(app: typer.Typer) -> None:
    """Add ``worker``, ``beat`` and ``jobs`` to the ``hep2`` command."""
    app.add_typer(jobs_app, name="jobs")
    app.command()(bench)

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
        celery_worker_app().worker_main(argv + list(ctx.args))

    @app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    def beat(ctx: typer.Context, loglevel: str = typer.Option("INFO", "-l", "--loglevel")) -> None:
        """Run Celery beat (the inbox sweep and other schedules)."""
        celery_worker_app().start(["beat", "-l", loglevel, *ctx.args])




jobs_app = typer.Typer(no_args_is_help=True, help="Analysis jobs: list failures, re-run, sweep now.")


@jobs_app.command("list")
def list_jobs(status: str = typer.Option("failed", help="Slide status: failed, rejected, queued, ..."),
              limit: int = typer.Option(50)) -> None:
    """Slides in a status, newest first, with their reason."""
    from sqlalchemy import select

    from db.models import SlideImage, SlideStatus
    from db.session import session_scope

    with session_scope() as session:
        slides = session.scalars(select(SlideImage).where(SlideImage.status == SlideStatus(status))
                                 .order_by(SlideImage.updated_at.desc()).limit(limit)).all()
        for slide in slides:
            typer.echo(f"{slide.id:>7}  {slide.status.value:<12} {slide.key}  {slide.status_reason or ''}")
        typer.echo(f"{len(slides)} slide(s) {status}")


@jobs_app.command("rerun")
def rerun(slide_ids: list[int] = typer.Argument(..., help="Slide ids to analyse again.")) -> None:
    """Queue failed (or finished) slides again; rejected input stays rejected."""
    from db.session import session_scope
    from workers.jobs import requeue

    for slide_id in slide_ids:
        with session_scope() as session:
            requeue(session, slide_id)
        celery_client_lazy().send_task("hep2.analyze_slide", args=[slide_id])
        typer.echo(f"slide {slide_id} queued")


@jobs_app.command("sweep")
def sweep() -> None:
    """Queue the inbox sweep and the stale-job re-queue now (beat does it on a schedule)."""
    client = celery_client_lazy()
    for task in ("hep2.sweep_inbox", "hep2.requeue_stale"):
        client.send_task(task)
        typer.echo(f"{task} queued")


def celery_client_lazy() -> Celery:
    """Imported late, so that `hep2 --help` connects nothing."""
    from workers.celery_app import celery_client

    return celery_client()


def celery_worker_app() -> Celery:
    """The app whose tasks a worker runs (importing it imports the task modules)."""
    from workers.celery_app import celery_app

    return celery_app


class BenchPart(StrEnum):
    batch_sweep = "batch-sweep"


def bench(
    json_out: Path = typer.Option(Path("bench.json"), "--json", help="Where to write the report."),
    count: int = typer.Option(20, help="Fields per measurement."),
    height: int = typer.Option(966, help="SYNTHETIC field height (ignored with --data)."),
    width: int = typer.Option(1296, help="SYNTHETIC field width (ignored with --data)."),
    data: Path | None = typer.Option(None, help="Folder of real field images to cycle through."),
    only: BenchPart | None = typer.Option(None, help="Run one part only: batch-sweep (classifier cells/s by "
                                                     "batch size)."),
) -> None:
    """Fields/s for the models alone and through queue, storage and database, classifier batch sweep; JSON."""
    from workers.bench import run_bench

    report = run_bench(count, (height, width), data, json_out, only.value if only else None)
    if "models_alone" in report:
        typer.echo(f"models alone: {report['models_alone']['fields_per_s']} fields/s; end to end: "
                   f"{report['end_to_end']['fields_per_s']} fields/s; ratio {report['ratio']}")
    sweep = report["classifier_batch_sweep"]
    rates = ", ".join(f"{b['batch_size']}: {b['cells_per_s']}" for b in sweep["batches"])
    typer.echo(f"classifier cells/s by batch size on {sweep['device']} (TTA {sweep['tta']}): {rates}; largest vs "
               f"per-slide batch x{sweep['speedup_largest_vs_per_slide']}; wrote {json_out}")

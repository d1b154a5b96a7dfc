"""Running the service: ``hep2 api``, ``worker``, ``beat``, ``demo``, ``bench`` and ``bench-api``."""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path

import typer

from cli.apps import app
from cli.demo import print_report, run_demo
from hep2.settings import InsecureSettingsError, require_secure_settings
from workers.routing import QUEUES


def refuse_insecure_settings() -> None:
    """Exit (code 2) with the reasons when production settings keep a default or placeholder secret."""
    try:
        require_secure_settings()
    except InsecureSettingsError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def worker(
    ctx: typer.Context,
    queues: str = typer.Option("gpu,cpu,training,lis", "-Q", "--queues", help="Comma-separated queues."),
    concurrency: int | None = typer.Option(None, "-c", "--concurrency",
                                           help="Processes; default 1 with a CUDA GPU, else one single-threaded "
                                                "process per core."),
    loglevel: str = typer.Option("INFO", "-l", "--loglevel"),
) -> None:
    """Run a Celery worker (extra options go to ``celery worker``)."""
    wanted = [q.strip() for q in queues.split(",") if q.strip()]
    unknown = sorted(set(wanted) - set(QUEUES))
    if unknown:
        raise typer.BadParameter(f"unknown queue(s) {unknown}; known: {', '.join(QUEUES)}")
    refuse_insecure_settings()
    import cv2  # only for this command (threads per process)
    import torch  # only for this command (the GPU check; torch threads per process)

    from workers.process import THREADS_ENV, default_processes, threads_per_process
    from workers.tasks import celery_app  # builds the worker's app and imports torch: only for this command

    if concurrency is None:
        # one process owns the GPU (run one worker per GPU to use several); on a CPU one process per core
        concurrency = default_processes(cuda="gpu" in wanted and torch.cuda.is_available())
    threads = threads_per_process(concurrency)
    os.environ[THREADS_ENV] = str(threads)  # the pool processes set it at start (workers.tasks)
    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    argv = ["worker", "-Q", ",".join(wanted), "-l", loglevel, "-c", str(concurrency)]
    celery_app.worker_main(argv + list(ctx.args))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def beat(ctx: typer.Context, loglevel: str = typer.Option("INFO", "-l", "--loglevel")) -> None:
    """Run Celery beat (the inbox sweep and other schedules)."""
    refuse_insecure_settings()
    from workers.tasks import celery_app  # builds the worker's app and imports torch: only for this command

    celery_app.start(["beat", "-l", loglevel, *ctx.args])


@app.command()
def api(host: str = typer.Option("127.0.0.1", help="Interface; 0.0.0.0 in a container."),
        port: int = typer.Option(8000), workers: int = typer.Option(1, help="uvicorn worker processes.")) -> None:
    """Serve the HTTP API (uvicorn); the app itself also refuses insecure settings at start-up."""
    refuse_insecure_settings()
    import uvicorn  # the server is only needed by this command

    uvicorn.run("api.app:app", host=host, port=port, workers=workers, proxy_headers=True)


@app.command()
def demo(
    input_dir: Path | None = typer.Option(None, "--input", help="Folder of slide images; default: synthetic."),
    state_dir: Path | None = typer.Option(None, help="Embedded state; default HEP2_STATE_DIR (var), the folder "
                                                      "`hep2 api` serves. Wiped at start only if an earlier demo "
                                                      "created it."),
) -> None:
    """Run the main job on embedded defaults: SQLite, local bucket, file broker, a real worker."""
    print_report(run_demo(input_dir, state_dir))


class BenchPart(StrEnum):
    batch_sweep = "batch-sweep"
    train_precision = "train-precision"


@app.command()
def bench(
    json_out: Path = typer.Option(Path("bench.json"), "--json", help="Where to write the report."),
    count: int = typer.Option(20, help="Fields per measurement."),
    height: int = typer.Option(966, help="SYNTHETIC field height (ignored with --data)."),
    width: int = typer.Option(1296, help="SYNTHETIC field width (ignored with --data)."),
    data: Path | None = typer.Option(None, help="Folder of real field images to cycle through."),
    only: BenchPart | None = typer.Option(None, help="Run one part only: batch-sweep (classifier cells/s by "
                                                     "batch size) or train-precision (training cells/s by "
                                                     "precision and memory format, I3A cells)."),
    train_img_size: int = typer.Option(48, help="Crop size for train-precision."),
    processes: int | None = typer.Option(None, help="Analysing processes on this host (models alone and the "
                                                    "worker); default: as `hep2 worker` (1 with a GPU, else "
                                                    "one single-threaded process per core)."),
    shared_worker: bool = typer.Option(False, help="End to end with one worker for every queue instead of an "
                                                   "analysing worker + a service worker (docker-compose.yml)."),
    rounds: int = typer.Option(1, min=1, help="End-to-end runs, each between two models-alone runs; the ratio is "
                                              "the median over the rounds."),
) -> None:
    """Fields/s for the models alone and through queue, storage and database, classifier batch sweep; JSON."""
    from workers.bench import run_bench  # imports torch and the models: only for this command

    report = run_bench(count, (height, width), data, json_out, only.value if only else None, processes,
                       train_img_size, shared_worker, rounds)
    if "training_throughput" in report:
        speed = report["training_throughput"]
        typer.echo(f"training cells/s: {speed['cells_per_s']}; vs fp32 {speed['speedup_vs_fp32']}; wrote {json_out}")
        return
    if "models_alone" in report:
        for n, row in enumerate(report["rounds"], 1):
            typer.echo(f"round {n}, {report['processes']} process(es) on this host: models alone "
                       f"{row['models_alone_before_fields_per_s']} / {row['models_alone_after_fields_per_s']} "
                       f"fields/s (before / after); end to end {row['end_to_end_fields_per_s']} fields/s; "
                       f"ratio {row['ratio']}")
        shares = (report["models_alone"]["models_share_of_process_time"],
                  report["end_to_end"]["models_share_of_process_time"])
        typer.echo(f"ratio {report['ratio']}; share of the analysing processes' time in the models: alone "
                   f"{shares[0]}, end to end {shares[1]}")
        median = report["rounds"][report["median_round"] - 1]
        if (cpu := report["end_to_end"].get("cpu_ms_per_field")) and median["models_alone_cpu_ms_per_field"]:
            typer.echo(f"CPU ms per field end to end (round {report['median_round']}): "
                       + ", ".join(f"{k} {v:g}" for k, v in cpu.items())
                       + f"; models alone {median['models_alone_cpu_ms_per_field']:g} (mean of its two runs; "
                       f"analysing CPU ratio {report['analysing_cpu_ratio']})")
        stages = report["models_alone"]["stage_ms"]
        typer.echo("per field, ms (median / p95): " + ", ".join(
            f"{k} {v['median']:g} / {v['p95']:g}" for k, v in stages.items()))
    sweep = report["classifier_batch_sweep"]
    rates = ", ".join(f"{b['batch_size']}: {b['cells_per_s']}" for b in sweep["batches"])
    typer.echo(f"classifier cells/s by batch size on {sweep['device']} (TTA {sweep['tta']}): {rates}; largest vs "
               f"per-slide batch x{sweep['speedup_largest_vs_per_slide']}; wrote {json_out}")


@app.command("bench-api")
def bench_api(
    json_out: Path = typer.Option(Path("bench-api.json"), "--json", help="Where to write the report."),
    specimens: int = typer.Option(10_000, help="Specimens to have in the database (seeded if fewer)."),
    requests: int = typer.Option(200, help="Worklist page requests to time."),
) -> None:
    """Seed specimens and time the worklist page (p50/p95); writes JSON."""
    from api.bench_worklist import run  # builds the FastAPI app: only for this command

    report = run(specimens, requests, json_out)
    typer.echo(f"worklist page over {report['specimens']} specimens: p50 {report['first_page_ms']['p50']} ms, "
               f"p95 {report['first_page_ms']['p95']} ms; wrote {json_out}")

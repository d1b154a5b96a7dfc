"""``hep2 bench``: pipeline throughput for the models alone and for the whole path through the service.

* models alone: ``analyze_field`` in this process on fields held in memory (the limit);
* end to end: the same fields uploaded to the configured storage, registered through the broker by real
  worker processes (as docker-compose.yml runs them: an analysing worker and a service worker for
  registrations and reports; ``--shared-worker``: one worker for every queue), analysed, results committed to
  the database, overlay layers uploaded; timed from the first upload to the last committed result, after one
  warm-up field per analysing process so model loading is not counted.

Both run on the same hardware with the same fields; the ratio is end-to-end / models-alone, with each
end-to-end run between two models-alone runs (before and after; ``--rounds``: several such rounds, median)
because a shared host's speed drifts by ±10 % from one minute to the next. Both report
``models_share_of_process_time``, the share of the analysing processes' time inside ``analyze_field``'s
stages, read within one window (drift cancels); end to end also the worker's per-stage times. Both also
report the CPU ms per field of each process (tree) over the timed window, read from /proc (Linux): the
models; the analysing worker, the service worker, this process (uploads, polling), the rest of the host
(database, broker and storage when they share it, the kernel) and idle capacity. ``analysing_cpu_ratio``
(models-alone CPU / analysing-worker CPU per field) is the share of the worker's CPU that is the models,
whatever else shares the host; ``ratio`` also pays for everything else on the host.

* classifier batch sweep (``--only batch-sweep`` runs it alone): cells/s of the worker's cell classifier
  (``predict_array``, its TTA, autocast on CUDA) when one batch holds one slide's cells (the median number of
  classified cells per field of the models-alone run, else 150) or 512, 1024, 2048 cells, i.e. whether
  batching the cells of several queued slides together would pay on this hardware.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import platform
import shutil
import socket
import statistics
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from analysis.analyze import analyze_field
from analysis.cells import crop_cell, measure_cells
from analysis.config import load_config
from analysis.decode import ImageLimits, decode_image
from analysis.device import autocast_dtype, hardware
from analysis.models.fused import cnn_of
from db.migrate import upgrade
from db.session import session_scope
from hep2.jsonio import write_json
from hep2.settings import get_settings
from hep2.storage import storage_from_settings
from hep2.synthetic import SYNTHETIC_PATTERNS, synthetic_png
from training.datasets import i3a_root, load_manifest
from training.recipe import RECIPE
from training.throughput import training_throughput
from workers import cpu_usage
from workers.celery_app import create_celery_app
from workers.jobs import succeeded_timings, wait_for_final
from workers.model_cache import ModelCache
from workers.persist import DOWNLOAD_STAGE
from workers.process import default_processes, threads_per_process, worker_process
from workers.routing import TaskName


def bench_fields(count: int, size: tuple[int, int], data_dir: Path | None) -> list[tuple[str, bytes]]:
    """Real field images from ``data_dir`` (cycled) or SYNTHETIC ones of ``size``."""
    if data_dir is not None:
        files = sorted(p for p in data_dir.iterdir() if p.suffix.lower() in {".png", ".tif", ".tiff", ".jpg"})
        return [(f"{i:03d}-{files[i % len(files)].name}", files[i % len(files)].read_bytes()) for i in range(count)]
    return [(f"{i:03d}-SYNTHETIC.png", synthetic_png(SYNTHETIC_PATTERNS[i % 5], seed=i, size=size, cells=40))
            for i in range(count)]


SWEEP_BATCHES = (512, 1024, 2048)
DEFAULT_SLIDE_CELLS = 150
"""Per-slide batch of the sweep when no models-alone run measured one (cells classified per field)."""


def worker_models() -> Any:
    """The models a worker would use now (registry, pins, settings)."""

    settings = get_settings()
    with session_scope() as session:
        return ModelCache().get(session, storage_from_settings(), settings, load_config(settings.pipeline_config))


def stage_stats(timings: list[dict[str, float]]) -> dict[str, Any]:
    """Per-stage median, p95 and mean (ms per field) over the fields' ``timings_ms``, and the same for the
    per-field sum of the stages (``total``)."""
    stages = list(dict.fromkeys(k for t in timings for k in t))
    table = {k: [t.get(k, 0.0) for t in timings] for k in stages}
    table["total"] = [sum(t.values()) for t in timings]
    return {k: {"median": round(float(np.median(v)), 1), "p95": round(float(np.percentile(v, 95)), 1),
                "mean": round(float(np.mean(v)), 1)} for k, v in table.items()}


def models_share(timings: list[dict[str, float]], processes: int, seconds: float) -> float:
    """The share of the analysing processes' time (``processes`` × ``seconds``) spent inside
    ``analyze_field``'s stages: what is left went to waits, hand-overs and the tail of the run. Both terms
    come from the same window, so a shared host's drift cancels out of it."""
    return round(sum(sum(t.values()) for t in timings) / (1000.0 * processes * seconds), 3)


_POOL: dict[str, Any] = {}


def _pool_start(threads: int, warm_up: bytes, ready: Any) -> None:
    """A models-alone pool process: ``threads`` torch threads, the worker's models, one warm-up field."""
    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    _POOL["models"] = worker_models()
    analyze_field(warm_up, _POOL["models"], accept_16bit=get_settings().accept_16bit)
    ready.wait()


def _pool_field(data: bytes) -> tuple[dict[str, float], int]:
    result = analyze_field(data, _POOL["models"], accept_16bit=get_settings().accept_16bit)
    return result.timings_ms, sum(c.probabilities is not None for c in result.cells)


def models_alone(fields: list[tuple[str, bytes]], models: Any, processes: int = 1) -> dict[str, Any]:
    """``analyze_field`` on ``fields`` held in memory: in this process (``processes=1``, torch's threads as
    set), else in ``processes`` processes at once (each with cores / processes torch threads), timed from
    when all have loaded their models and analysed one warm-up field."""
    sixteen = get_settings().accept_16bit
    models_cpu = {"models": os.getpid()}  # this process, or it and its pool processes
    if processes <= 1:
        analyze_field(fields[0][1], models, accept_16bit=sixteen)  # warm-up: load the models
        before, started = cpu_usage.snapshot(models_cpu), time.perf_counter()
        timings, classified = [], []
        for _, data in fields:
            result = analyze_field(data, models, accept_16bit=sixteen)
            timings.append(result.timings_ms)
            classified.append(sum(c.probabilities is not None for c in result.cells))
        seconds, after = time.perf_counter() - started, cpu_usage.snapshot(models_cpu)
        threads = torch.get_num_threads()
    else:
        threads = threads_per_process(processes)
        context = multiprocessing.get_context("spawn")  # no fork of a process that has run torch
        ready = context.Barrier(processes + 1)
        with context.Pool(processes, _pool_start, (threads, fields[0][1], ready)) as pool:
            ready.wait()
            before, started = cpu_usage.snapshot(models_cpu), time.perf_counter()
            done = pool.map(_pool_field, [data for _, data in fields], chunksize=1)
            seconds, after = time.perf_counter() - started, cpu_usage.snapshot(models_cpu)
        timings, classified = [t for t, _ in done], [n for _, n in done]
    stats = stage_stats(timings)
    return {"fields": len(fields), "processes": processes, "torch_threads_per_process": threads,
            "seconds": round(seconds, 3), "fields_per_s": round(len(fields) / seconds, 3),
            "models_share_of_process_time": models_share(timings, processes, seconds),
            "cpu_ms_per_field": cpu_usage.ms_per_item(before, after, len(fields)),
            "mean_stage_ms": {k: v["mean"] for k, v in stats.items() if k != "total"},
            "stage_ms": stats, "per_field_timings_ms": timings,
            "median_classified_cells": int(statistics.median(classified)), "model_versions": models.versions()}


def sweep_crops(models: Any, fields: Callable[[], list[tuple[str, bytes]]], limit: int = 512,
                ) -> tuple[np.ndarray, str]:
    """Up to ``limit`` real cells pre-processed for the classifier: I3A Task-1 crops, else cut from ``fields``."""

    clf, root = cnn_of(models.classifier), i3a_root()
    if (root / "labels.csv").is_file():
        table = load_manifest(root)
        picked = np.linspace(0, len(table) - 1, min(limit, len(table))).round().astype(int)
        crops = table.subset(picked.tolist()).load(clf.config.img_size, clf.config.use_mask, workers=2)
        return crops, f"{len(crops)} of the {len(table)} I3A Task-1 cells, evenly spaced ({root})"

    pairs: list[tuple[np.ndarray, np.ndarray]] = []
    used = 0
    for _, data in fields():
        used += 1
        field = decode_image(data, ImageLimits(accept_16bit=True))
        labels = np.asarray(models.segmenter.segment(field), dtype=np.int32)
        pairs += [crop_cell(field, labels, c) for c in measure_cells(field, labels) if c.excluded is None]
        if len(pairs) >= limit:
            break
    return clf.preprocess(pairs[:limit]), f"{min(len(pairs), limit)} cells cut from {used} bench fields"


def _predict_seconds(classifier: Any, x: np.ndarray, calls: int) -> float:
    """Seconds of ``calls`` ``predict_array(x)`` calls in one batch each (numpy out: CUDA work is finished)."""
    classifier.batch_size = len(x)  # predict_proba splits its input into chunks of batch_size
    started = time.perf_counter()
    for _ in range(calls):
        classifier.predict_array(x)
    return time.perf_counter() - started


def _sweep_row(size: int, calls: int, rounds: list[float]) -> dict[str, Any]:
    seconds = statistics.median(rounds)
    return {"batch_size": size, "calls": calls, "cells": calls * size, "seconds": round(seconds, 4),
            "ms_per_batch": round(1000 * seconds / calls, 2), "cells_per_s": round(calls * size / seconds, 1),
            "cells_per_s_rounds": [round(calls * size / t, 1) for t in rounds]}


def batch_sweep(classifier: Any, crops: np.ndarray, sizes: Sequence[int], repeats: int = 3) -> dict[str, Any]:
    """cells/s of ``classifier.predict_array`` with one batch of ``size`` cells, for each of ``sizes``.

    ``sizes[0]`` is the per-slide batch. Every measurement classifies the same number of cells (the largest
    size, in ``ceil(largest / size)`` calls of ``size`` crops tiled from ``crops``). After one warm-up call per
    size, the sizes are timed in turn, ``repeats`` rounds (so a shared machine's load hits them alike); the
    median round is reported, with the load average before and after.
    """
    largest, saved = max(sizes), classifier.batch_size
    inputs = {size: np.ascontiguousarray(np.resize(crops, (size, *crops.shape[1:]))) for size in sizes}
    calls = {size: -(-largest // size) for size in sizes}
    times: dict[int, list[float]] = {size: [] for size in sizes}
    load_before = os.getloadavg()[0]
    try:
        for size in sizes:
            _predict_seconds(classifier, inputs[size], 1)  # warm-up: allocations, cuDNN algorithm choice
        for _ in range(repeats):
            for size in sizes:
                times[size].append(_predict_seconds(classifier, inputs[size], calls[size]))
    finally:
        classifier.batch_size = saved
    rows = [_sweep_row(size, calls[size], times[size]) for size in sizes]
    dtype = autocast_dtype(classifier.device, getattr(classifier, "precision", "auto"))  # what it runs in
    return {"device": str(classifier.device), "autocast": str(dtype).removeprefix("torch.") if dtype else None,
            "tta": classifier.tta, "weights": [Path(p).name for p in classifier.paths], "unique_crops": len(crops),
            "crop_shape": list(crops.shape[1:]), "repeats": repeats, "torch_threads": torch.get_num_threads(),
            "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "per_slide_batch": sizes[0], "batches": rows,
            "speedup_largest_vs_per_slide": round(rows[-1]["cells_per_s"] / rows[0]["cells_per_s"], 3)}


def run_batch_sweep(models: Any, fields: Callable[[], list[tuple[str, bytes]]],
                    slide_cells: int | None) -> dict[str, Any]:
    """:func:`batch_sweep` of the worker's classifier (a fused model's CNN member: the part whose batch size
    matters) on real crops; ``slide_cells`` None → 150."""
    per_slide = slide_cells or DEFAULT_SLIDE_CELLS
    crops, source = sweep_crops(models, fields)
    if not len(crops):
        raise RuntimeError(f"no cells to time ({source})")
    sizes = [per_slide, *(b for b in SWEEP_BATCHES if b > per_slide)]
    result = batch_sweep(cnn_of(models.classifier), crops, sizes)
    return {"crops": source, "per_slide_batch_from": "median classified cells per field (models alone)"
            if slide_cells else f"default {DEFAULT_SLIDE_CELLS} (no models-alone run)", **result}


ANALYSING_WORKER, SHARED_WORKER = "analysing worker", "worker (every queue)"
"""Role names of the worker that analyses, in the CPU accounting (``--shared-worker``: it runs every queue)."""

END_TO_END_POLL_S = 0.1
"""How often the end-to-end run reads the slides' states: at the default 0.5 s, polling alone added ~0.25 s
on average (~7 %) to a 3.6 s run of 8 fields; 0.1 s costs ~0.05 s and little CPU."""


def end_to_end(fields: list[tuple[str, bytes]], log_dir: Path, timeout_s: float = 3600.0,
               processes: int = 1, shared_worker: bool = False) -> dict[str, Any]:
    """The same fields through storage, broker, real workers and the database, on this host.

    Workers as docker-compose.yml runs them: an analysing worker (queue ``gpu``, ``processes`` pool processes)
    and a service worker (queues ``cpu`` and ``lis``: registration of uploads, specimen reports; 1 process).
    ``shared_worker``: one worker with ``processes`` pool processes for every queue instead (registrations and
    reports then wait behind analyses in the same pool)."""
    storage, app = storage_from_settings(), create_celery_app()
    roles: dict[str, int] = {}  # role -> pid of its worker, for the CPU accounting
    run = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    prefix = f"{get_settings().inbox_prefix}bench-{run}/"
    node, host = f"bench-{os.getpid()}", socket.gethostname()
    env = {k: v for k, v in os.environ.items() if k.startswith("HEP2_")}
    with contextlib.ExitStack() as workers:
        only_analysis = {} if shared_worker else {"queues": "gpu"}  # else worker_process's default: every queue
        roles[SHARED_WORKER if shared_worker else ANALYSING_WORKER] = workers.enter_context(worker_process(
            app, env, f"{node}@{host}", log_dir / "bench-worker.log", concurrency=processes, **only_analysis)).pid
        if not shared_worker:
            roles["service worker"] = workers.enter_context(worker_process(
                app, env, f"{node}-service@{host}", log_dir / "bench-service-worker.log", queues="cpu,lis")).pid
        this_process = {"this process (uploads, polling)": os.getpid()}
        warm = [f"{prefix}warm-up-{i}.png" for i in range(processes)]  # every pool process loads its models
        for key in warm:
            storage.put(key, fields[0][1])
            app.send_task(TaskName.REGISTER_UPLOAD, args=[key])
        wait_for_final(warm, timeout_s)
        before, started = cpu_usage.snapshot(roles, this_process), time.perf_counter()
        keys = []
        for name, data in fields:
            keys.append(prefix + name)
            storage.put(keys[-1], data)
            app.send_task(TaskName.REGISTER_UPLOAD, args=[keys[-1]])  # what the S3 event triggers
        statuses = wait_for_final(keys, timeout_s, poll_s=END_TO_END_POLL_S)
        seconds, after = time.perf_counter() - started, cpu_usage.snapshot(roles, this_process)
    with session_scope() as session:  # the worker's stage times, less its own download (not analyze_field's)
        timings = [{k: v for k, v in t.items() if k != DOWNLOAD_STAGE} for t in succeeded_timings(session, keys)]
    outcome: dict[str, int] = {}
    for status in statuses.values():
        outcome[status.value] = outcome.get(status.value, 0) + 1
    return {"fields": len(fields), "seconds": round(seconds, 3), "fields_per_s": round(len(fields) / seconds, 3),
            "worker_processes": processes, "torch_threads_per_process": threads_per_process(processes),
            "workers": "one worker, every queue" if shared_worker else
            "analysis worker (queue gpu) + service worker (queues cpu, lis; 1 process)", "statuses": outcome,
            "models_share_of_process_time": models_share(timings, processes, seconds),
            "cpu_ms_per_field": cpu_usage.ms_per_item(before, after, len(fields)),
            "stage_ms": stage_stats(timings) if timings else {}}


def analysing_cpu_ratio(models_cpu_ms: float | None, through: dict[str, Any]) -> float | None:
    """Models-alone CPU per field / the analysing worker's CPU per field end to end: how much of what the
    analysing worker spends is the models, whatever else shares the host (None without /proc)."""
    through_cpu = through.get("cpu_ms_per_field")
    if not models_cpu_ms or not through_cpu:
        return None
    worker = through_cpu.get(ANALYSING_WORKER) or through_cpu.get(SHARED_WORKER)
    return round(models_cpu_ms / worker, 3) if worker else None


def _models_cpu(run: dict[str, Any]) -> float | None:
    return (run.get("cpu_ms_per_field") or {}).get("models")


def bracketed_rounds(fields: list[tuple[str, bytes]], models: Any, processes: int, rounds: int, log_dir: Path,
                     shared_worker: bool = False) -> dict[str, Any]:
    """Models alone, then ``rounds`` × (end to end, models alone): each end-to-end run is compared with the
    mean of the models-alone runs just before and just after it, so that a shared host's drift over the
    minutes of a round hits both sides alike; ``ratio`` is the median over the rounds (``end_to_end``: the
    run of that round, with its CPU and stage breakdown)."""
    alone = [models_alone(fields, models, processes)]
    through: list[dict[str, Any]] = []
    for _ in range(rounds):
        through.append(end_to_end(fields, log_dir, processes=processes, shared_worker=shared_worker))
        alone.append(models_alone(fields, models, processes))
    table = []
    for i, run in enumerate(through):
        before, after = alone[i], alone[i + 1]
        cpu = [c for c in (_models_cpu(before), _models_cpu(after)) if c]
        models_cpu = statistics.mean(cpu) if cpu else None
        table.append({"models_alone_before_fields_per_s": before["fields_per_s"],
                      "end_to_end_fields_per_s": run["fields_per_s"],
                      "models_alone_after_fields_per_s": after["fields_per_s"],
                      "ratio": round(2 * run["fields_per_s"] / (before["fields_per_s"] + after["fields_per_s"]), 3),
                      "models_alone_cpu_ms_per_field": round(models_cpu, 1) if models_cpu else None,
                      "analysing_cpu_ratio": analysing_cpu_ratio(models_cpu, run)})
    middle = sorted(range(rounds), key=lambda i: table[i]["ratio"])[(rounds - 1) // 2]
    return {"models_alone": alone[0], "end_to_end": through[middle], "rounds": table, "median_round": middle + 1,
            "models_alone_fields_per_s": [a["fields_per_s"] for a in alone],
            "ratio": table[middle]["ratio"], "analysing_cpu_ratio": table[middle]["analysing_cpu_ratio"]}


def environment() -> dict[str, Any]:
    settings = get_settings()
    return {"date": datetime.now(UTC).isoformat(timespec="seconds"), "host": platform.node(), **hardware(),
            "database": settings.resolved_database_url.split("://")[0],
            "broker": settings.resolved_broker_url.split("://")[0], "storage": settings.storage_backend,
            "worker": socket.gethostname()}


def _prepare_state() -> None:
    """Embedded mode (no database URL): fresh service state in ``var/bench``, migrated."""
    if not get_settings().database_url:

        state = Path("var/bench").resolve()
        shutil.rmtree(state, ignore_errors=True)
        os.environ["HEP2_STATE_DIR"] = str(state)
        get_settings.cache_clear()

        upgrade()


def run_bench(count: int, size: tuple[int, int], data_dir: Path | None, out: Path,
              only: str | None = None, processes: int | None = None,
              train_img_size: int = RECIPE.img_size, shared_worker: bool = False, rounds: int = 1,
              ) -> dict[str, Any]:
    """Measure both paths and the batch sweep on the same fields (``only="batch-sweep"``: the sweep alone;
    ``only="train-precision"``: classifier training cells/s by precision on the I3A cells).

    ``processes``: analysing processes on this host, in the models-alone run and in the worker (default: what
    ``hep2 worker`` picks, :func:`workers.process.default_processes`); fields/s are per host. ``rounds``:
    end-to-end runs, each bracketed by models-alone runs (:func:`bracketed_rounds`).
    """
    _prepare_state()
    processes = processes or default_processes(cuda=torch.cuda.is_available())
    report: dict[str, Any] = {"environment": environment(), "processes": processes}
    if only == "train-precision":
        table = load_manifest(i3a_root())
        recipe = RECIPE.with_(img_size=train_img_size)
        report["training_throughput"] = training_throughput(
            table.load(recipe.img_size, recipe.use_mask, workers=2), table.labels, recipe)
        write_json(out, report)
        return report
    models = worker_models()
    if only == "batch-sweep":
        report["classifier_batch_sweep"] = run_batch_sweep(
            models, lambda: bench_fields(min(count, 4), size, data_dir), None)
    else:
        report["inputs"] = str(data_dir) if data_dir else f"SYNTHETIC fields {size[0]}x{size[1]}"
        fields = bench_fields(count, size, data_dir)
        report.update(bracketed_rounds(fields, models, processes, rounds, out.parent, shared_worker))
        report["classifier_batch_sweep"] = run_batch_sweep(
            models, lambda: fields, report["models_alone"]["median_classified_cells"])
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, report)
    return report

"""Is the service what limits a fast model? Worker jobs/s vs the raw model, and submit CPU by phase.

    python -m bench.throughput [--jobs 200] [--sizes 1,16] [--model instant|tiny|blip-base] [--tokens 3]
                               [--torch-threads 1] [--rounds 2] [--decode-processes 0] [--submits 300]
                               [--rate 150] [--seconds 6] [--database-url URL] [--part all|worker|submit]
                               [--quick]

worker:  for each batch size k, ``--jobs`` distinct photos (512x512 JPEGs) are submitted first
         (not timed), then an in-process ImgsvcWorker (burst mode, BATCH_SIZE=k, the model
         already loaded) drains them: jobs/s = jobs / (first dequeue -> last job finished).
         In the same run, in ABBA order, the raw model describes the same photos (decoded
         beforehand) in chunks of k: images/s. The model is near-free so the service shows:
         the tiny BLIP generating ``--tokens`` tokens, or ``--model instant``, a trivial
         describer that returns a fixed sentence (bench only); on a GPU (``DEVICE=cuda``),
         ``--model blip-base`` is fast enough to ask the same question. The figure is
         per-job cost outside the model = 1/(worker jobs/s) - 1/(raw images/s).
         Beside it, a bare loop that also decodes each JPEG (in-process, Pillow, no budget):
         what the worker costs beyond decode + model is the service's own share.
         Each phase of the worker's main thread is timed (exclusive, wall and CPU; see
         bench/phases.py), with Redis round trips and SQL statements per job.
submit:  POST /api/v1/submit of a ~100 KB JPEG through the Flask test client, CPU per request
         by phase; then the production path: imgsvc and a bare Flask app that parses the same
         upload (bench/hello_app.py), each under ``gunicorn -c gunicorn.conf.py``, an open-loop
         load of ``--rate`` req/s for ``--seconds`` s: CPU per request of the gunicorn workers
         (from /proc), and the ceiling that implies on this machine's cores.

The machine is shared and noisy: the ratios and differences measured in one run are the
figures; the load average is printed with them.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from bench import api_load, harness
from bench.harness import Service, goal, table
from bench.phases import PhaseClock
from imgsvc.decoding import auto_decode_processes
from imgsvc.vision.base import Describer, Description

#: The worker's phases, in the order a job meets them.
WORKER_PHASES = (
    "dequeue",
    "rq bookkeeping",
    "sql (claim, read)",
    "store read",
    "decode",
    "model",
    "result write (sql)",
    "metrics (redis)",
    "logs",
    "glue",
)
SUBMIT_PHASES = (
    "multipart parse",
    "staging + hash",
    "header check",
    "model lookup (redis)",
    "sql insert",
    "enqueue (rq)",
    "metrics (redis)",
    "logs",
    "flask + glue",
)


class InstantDescriber(Describer):
    """A trivial describer for benches only: a fixed sentence per image, no model at all."""

    name = "instant-describer (bench only)"

    def describe_full(
        self, images: Sequence[Image.Image], options: Mapping[str, Any] | None = None
    ) -> list[Description]:
        return [Description("a picture (bench: no model ran)") for _ in images]


def load_model(kind: str, tokens: int, threads: int) -> Describer:
    if kind == "instant":
        return InstantDescriber()
    import torch

    describer = harness.load_captioner(kind, tokens=tokens)  # DEVICE=cuda puts it on the GPU
    torch.set_num_threads(threads)
    return describer


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


# -- worker ---------------------------------------------------------------------------------------
def instrument_worker(clock: PhaseClock, service: Service, describer: Describer) -> None:
    """Charge the worker's calls to their phases (names that do not exist are skipped)."""
    from rq import Queue
    from rq.worker.base import BaseWorker

    from imgsvc.decoding import Decoder
    from imgsvc.metrics import RedisMetrics
    from imgsvc.queue import tasks
    from imgsvc.storage import jobs
    from imgsvc.storage.db import db

    clock.wrap(Queue, "dequeue_any", "dequeue")
    for method in (
        "dequeue_job_and_maintain_ttl",
        "prepare_execution",
        "prepare_job_execution",
        "handle_execution_ended",
        "handle_job_success",
        "handle_job_failure",
        "handle_job_retry",
        "heartbeat",
        "set_state",
        "run_maintenance_tasks",
    ):
        clock.wrap(BaseWorker, method, "rq bookkeeping")
    with contextlib.suppress(ImportError):  # the worker's own batch bookkeeping, where there is one
        clock.wrap_module(importlib.import_module("imgsvc.queue.batches"), "rq bookkeeping")
    clock.wrap_module(jobs, "sql (claim, read)", only=lambda name: name != "finish_jobs")
    clock.wrap_module(jobs, "result write (sql)", only=lambda name: name == "finish_jobs")
    clock.wrap(tasks, "job_options", "sql (claim, read)")
    clock.wrap(type(service.app.uploads), "local_copy", "store read", context_manager=True)
    clock.wrap(Decoder, "decode_many", "decode")
    with contextlib.suppress(ImportError):  # where a thread reads and decodes: waiting for it
        loader = importlib.import_module("imgsvc.queue.prefetch").ImageLoader
        clock.wrap(loader, "load", "decode")
    clock.wrap(type(describer), "describe_full", "model")
    for method in ("record", "count", "observe"):
        clock.wrap(RedisMetrics, method, "metrics (redis)")
    clock.wrap(logging.Logger, "_log", "logs")
    clock.count_round_trips()
    with service.app.app_context():
        clock.count_sql(db.engine)


def worker_run(
    clock: PhaseClock, service: Service, batch_size: int, jobs: int, decode_processes: int = 0
) -> dict[str, Any]:
    """Drain what is queued; the clock runs from the first dequeue to the last job's end."""
    from rq.worker.base import BaseWorker

    worker = service.worker(batch_size=batch_size, decode_processes=decode_processes)
    worker.load_runtime()  # the decoder children start here, before the clock
    marks: dict[str, Any] = {}
    dequeue, execute = BaseWorker.dequeue_job_and_maintain_ttl, type(worker).execute_job

    def first_dequeue(*args: Any, **kwargs: Any) -> Any:
        if "start" not in marks:
            clock.reset()
            clock.active = True
            marks["start"] = time.perf_counter()
        return dequeue(worker, *args, **kwargs)

    def timed_execute(*args: Any, **kwargs: Any) -> Any:
        result = execute(worker, *args, **kwargs)
        marks["end"] = time.perf_counter()
        marks["phases"] = clock.snapshot()
        marks["decoder_cpu"] = sum(process_cpu(pid) for pid in children)
        return result

    worker.dequeue_job_and_maintain_ttl = first_dequeue  # type: ignore[method-assign]
    worker.execute_job = timed_execute  # type: ignore[method-assign]
    children = worker.runtime.decoder.pids()
    decoder_before = sum(process_cpu(pid) for pid in children)
    try:
        worker.work(burst=True, logging_level="INFO")
    finally:
        clock.active = False
    decoder_cpu = marks["decoder_cpu"] - decoder_before
    done = _count_done(service)
    if done != jobs:
        raise RuntimeError(f"batch {batch_size}: {done} of {jobs} jobs done after the worker ran")
    wall, cpu, counts = marks["phases"]
    return {
        "seconds": marks["end"] - marks["start"],
        "wall": wall,
        "cpu": cpu,
        "counts": counts,
        "decoder_cpu": decoder_cpu,
    }


def process_cpu(pid: int) -> float:
    """utime + stime of one process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _count_done(service: Service) -> int:
    from sqlalchemy import func, select

    from imgsvc.storage import jobs
    from imgsvc.storage.db import db

    with service.app.app_context():
        done = db.session.scalar(
            select(func.count()).select_from(jobs.Job).where(jobs.Job.status == jobs.Status.DONE)
        )
        db.session.query(jobs.Job).delete()  # the next run counts its own jobs
        db.session.commit()
    return done or 0


def raw_run(describer: Describer, images: list[Image.Image], batch_size: int) -> float:
    started = time.perf_counter()
    for i in range(0, len(images), batch_size):
        describer.describe_full(images[i : i + batch_size])
    return time.perf_counter() - started


def decoding_run(describer: Describer, files: list[Path], batch_size: int) -> float:
    """The bare loop that also decodes each file (in this process: no child, no budget)."""
    from imgsvc.config import Settings
    from imgsvc.decoding import load_for_model

    settings = Settings()
    started = time.perf_counter()
    for i in range(0, len(files), batch_size):
        chunk = files[i : i + batch_size]
        describer.describe_full(
            [load_for_model(f, settings.max_image_pixels, settings.max_image_side) for f in chunk]
        )
    return time.perf_counter() - started


def worker_part(args: argparse.Namespace) -> None:
    describer = load_model(args.model, args.tokens, args.torch_threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    n = args.jobs
    harness.header(
        "throughput: worker jobs/s vs the raw model, near-free model",
        model=describer.name if args.model == "instant" else f"{args.model} BLIP, {args.tokens} tokens",
        **({} if args.model == "instant" else {"torch_threads": args.torch_threads}),
        jobs=n,
        sizes=args.sizes,
        rounds=args.rounds,
        database="PostgreSQL" if args.database_url else "SQLite",
        decode_processes=args.decode_processes or f"auto ({auto_decode_processes(1)})",
        load=load_average(),
    )
    photos = harness.photos(n * len(sizes) * args.rounds + 1)
    images = [harness.decoded(jpeg) for jpeg in photos[:n]]
    clock = PhaseClock()
    settings = {"database_url": args.database_url} if args.database_url else {}
    results: dict[int, dict[str, list[Any]]] = {k: {"raw": [], "decoding": [], "worker": []} for k in sizes}
    files_dir = Path(tempfile.mkdtemp(prefix="imgsvc-bench-"))
    files = []
    for i, jpeg in enumerate(photos[:n]):
        files.append(files_dir / f"{i}.jpg")
        files[-1].write_bytes(jpeg)
    with harness.scratch_service(describer, **settings) as service:
        instrument_worker(clock, service, describer)
        try:
            service.submit(photos[-1])  # warm-up: first connections, first model call
            worker_run(clock, service, 1, 1)
            raw_run(describer, images[: max(sizes)], max(sizes))
            used = 0
            for k in sizes:
                for r in range(args.rounds):
                    for side in ("raw", "worker") if r % 2 == 0 else ("worker", "raw"):
                        if side == "raw":
                            results[k]["raw"].append(raw_run(describer, images, k))
                            results[k]["decoding"].append(decoding_run(describer, files, k))
                            continue
                        for jpeg in photos[used : used + n]:
                            service.submit(jpeg)
                        used += n
                        run = worker_run(clock, service, k, n, args.decode_processes)
                        results[k]["worker"].append(run)
                    print(
                        f"  batch {k:>2} round {r + 1}: worker {results[k]['worker'][-1]['seconds']:.2f} s, "
                        f"raw {results[k]['raw'][-1]:.2f} s  (load {load_average()})",
                        flush=True,
                    )
        finally:
            clock.undo()
            shutil.rmtree(files_dir, ignore_errors=True)
    report_worker(results, n, sizes, args)


def report_worker(results: dict[int, dict[str, list[Any]]], n: int, sizes: list[int], args: Any) -> None:
    rows, outside = [], {}
    for k in sizes:
        worker_s = sum(run["seconds"] for run in results[k]["worker"]) / len(results[k]["worker"])
        raw_s = sum(results[k]["raw"]) / len(results[k]["raw"])
        decoding_s = sum(results[k]["decoding"]) / len(results[k]["decoding"])
        outside[k] = (worker_s - raw_s) / n * 1000
        spread = [run["seconds"] for run in results[k]["worker"]]
        rows.append([
            k, f"{n / worker_s:.0f}", f"{n / raw_s:.0f}", f"{raw_s / worker_s:.3f}", f"{outside[k]:.2f}",
            " / ".join(f"{(s - raw_s) / n * 1000:.2f}" for s in spread),
            f"{n / decoding_s:.0f}", f"{(worker_s - decoding_s) / n * 1000:.2f}",
        ])  # fmt: skip
    print()
    table(
        ["batch", "worker jobs/s", "raw model img/s", "worker/raw", "outside model ms/job", "per round",
         "decode+model img/s", "outside decode+model ms/job"],
        rows,
    )  # fmt: skip
    print(
        "(decode+model: a bare loop that also decodes each JPEG, in its own process; what the worker\n"
        " costs beyond it is the service: queue, rows, the decoder child's isolation)"
    )
    print("\nworker main thread per job, by phase: wall ms (CPU ms); rounds added up")
    phase_rows = []
    extra = sorted(
        {p for k in sizes for run in results[k]["worker"] for p in run["wall"]} - set(WORKER_PHASES)
    )
    for phase in [*WORKER_PHASES, *extra]:
        cells = []
        for k in sizes:
            runs = results[k]["worker"]
            wall = sum(run["wall"].get(phase, 0.0) for run in runs) / (n * len(runs)) * 1000
            cpu = sum(run["cpu"].get(phase, 0.0) for run in runs) / (n * len(runs)) * 1000
            cells.append(f"{wall:.3f} ({cpu:.3f})")
        phase_rows.append([phase, *cells])
    totals = []
    for k in sizes:
        runs = results[k]["worker"]
        main = [p for p in runs[0]["wall"] if "thread]" not in p]
        wall = sum(run["wall"].get(p, 0.0) for run in runs for p in main) / (n * len(runs)) * 1000
        cpu = sum(run["cpu"].get(p, 0.0) for run in runs for p in main) / (n * len(runs)) * 1000
        totals.append(f"{wall:.3f} ({cpu:.3f})")
    phase_rows.append(["total (main thread)", *totals])

    def per_job(k: int, figure: Callable[[dict[str, Any]], float]) -> float:
        runs = results[k]["worker"]
        return sum(figure(run) for run in runs) / (n * len(runs))

    phase_rows.append(
        ["decoder children CPU ms", *(f"{per_job(k, lambda r: r['decoder_cpu']) * 1000:.3f}" for k in sizes)]
    )
    for counter in ("redis round trips", "sql statements", "sql commits"):
        phase_rows.append(
            [f"{counter} per job", *(f"{per_job(k, lambda r, c=counter: r['counts'][c]):.2f}" for k in sizes)]
        )
    table(["phase", *(f"batch {k}" for k in sizes)], phase_rows)
    print(f"\nload average after the worker part: {load_average()}")
    print()
    applies = not args.quick
    for k, limit in ((16, 2.0), (1, 5.0)):
        if k in outside:
            goal(f"outside the model <= {limit:g} ms/job at batch {k}", outside[k] <= limit,
                 f"{outside[k]:.2f} ms", applies)  # fmt: skip
    if 16 in outside:
        runs = results[16]["worker"]
        rate = n / (sum(run["seconds"] for run in runs) / len(runs))
        goal("worker >= 500 jobs/s at batch 16", rate >= 500, f"{rate:.0f} jobs/s", applies)


# -- submit ---------------------------------------------------------------------------------------
def instrument_submit(clock: PhaseClock, service: Service) -> None:
    from flask import Flask
    from werkzeug.formparser import FormDataParser

    from imgsvc import submissions
    from imgsvc.metrics import RedisMetrics
    from imgsvc.storage import jobs
    from imgsvc.storage.uploads import UploadStore

    clock.wrap(Flask, "wsgi_app", "flask + glue")
    clock.wrap(FormDataParser, "parse", "multipart parse")
    for method in ("stage", "commit", "discard"):
        clock.wrap(UploadStore, method, "staging + hash")
    clock.wrap(submissions, "inspect_image", "header check")
    clock.wrap(submissions, "running_model", "model lookup (redis)")
    clock.wrap_module(jobs, "sql insert")
    clock.wrap(submissions, "enqueue_describe", "enqueue (rq)")
    for method in ("record", "count", "observe"):
        clock.wrap(RedisMetrics, method, "metrics (redis)")
    clock.wrap(logging.Logger, "_log", "logs")
    clock.count_round_trips()


def submit_part(args: argparse.Namespace) -> None:
    jpeg = harness.jpeg_of_size(100 * 1024)
    harness.header("throughput: submit CPU per request", jpeg_kb=len(jpeg) // 1024, load=load_average())
    clock = PhaseClock(base="client (test client, not counted)")
    with harness.scratch_service() as service:
        instrument_submit(clock, service)
        try:
            client = service.client
            for _ in range(20):
                _submit(client, jpeg)  # warm-up
            with clock.measure():
                for _ in range(args.submits):
                    _submit(client, jpeg)
            wall, cpu, counts = clock.snapshot()
        finally:
            clock.undo()
        n = args.submits
        rows = [
            [phase, f"{wall.get(phase, 0.0) / n * 1000:.3f}", f"{cpu.get(phase, 0.0) / n * 1000:.3f}"]
            for phase in SUBMIT_PHASES
        ]
        server = [p for p in wall if not p.startswith("client")]
        rows.append([
            "total in the app", f"{sum(wall[p] for p in server) / n * 1000:.3f}",
            f"{sum(cpu[p] for p in server) / n * 1000:.3f}",
        ])  # fmt: skip
        rows.append(["redis round trips", f"{counts['redis round trips'] / n:.2f}", ""])
        print("\nsubmit through the Flask test client, per request (in this process):")
        table(["phase", "wall ms", "CPU ms"], rows)

        print(f"\nunder gunicorn -c gunicorn.conf.py, {args.rate:g} req/s for {args.seconds:g} s:")
        env = service.environment()
        servers = {"bare Flask": ("bench.hello_app:app", "/"), "imgsvc": ("wsgi:app", "/healthz")}
        cpu_per_request = {}
        rows = []
        for name, (app, ready) in servers.items():
            with api_load.gunicorn(app, env, service.workdir / "gunicorn.log", ready) as (port, master):
                api_load.warm_up(port, jpeg)
                result = api_load.open_loop(port, master, jpeg, args.rate, args.seconds)
            cpu_per_request[name] = result.cpu_seconds / max(1, result.ok) * 1000
            lat = result.latencies or [float("nan")]
            rows.append([
                name, result.sent, f"{result.rate:.0f}", f"{cpu_per_request[name]:.2f}",
                f"{(os.cpu_count() or 1) * 1000 / cpu_per_request[name]:.0f}",
                f"{harness.percentile(lat, 50) * 1000:.1f}", f"{harness.percentile(lat, 99) * 1000:.1f}",
                ", ".join(f"{k} x{v}" for k, v in result.errors.items()) or "-",
            ])  # fmt: skip
    cores = os.cpu_count() or 1
    ceiling = f"ceiling/s on {cores} cores"
    table(["server", "sent", "answered/s", "CPU ms/req", ceiling, "p50 ms", "p99 ms", "errors"], rows)
    imgsvc = cpu_per_request["imgsvc"]
    print(f"\nimgsvc - bare Flask: {imgsvc - cpu_per_request['bare Flask']:.2f} ms CPU per request; "
          f"load average {load_average()}")  # fmt: skip
    print()
    goal("submit CPU <= 2.5 ms per request under gunicorn", imgsvc <= 2.5, f"{imgsvc:.2f} ms", not args.quick)


def _submit(client: Any, jpeg: bytes) -> None:
    response = client.post(
        "/api/v1/submit",
        data={"file": (io.BytesIO(jpeg), "photo.jpg", "image/jpeg")},
        content_type="multipart/form-data",
    )
    if response.status_code != 202:
        raise RuntimeError(f"submit answered {response.status_code}: {response.get_data(as_text=True)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=200, help="jobs per worker run")
    parser.add_argument("--sizes", default="1,16", help="batch sizes")
    parser.add_argument(
        "--model", choices=("instant", "tiny", "blip-base"), default="instant", help="blip-base: for a GPU"
    )
    parser.add_argument("--tokens", type=int, default=3, help="tokens a BLIP model generates")
    parser.add_argument(
        "--torch-threads", type=int, default=1, help="tiny model: 1 keeps it off the decoder child's core"
    )
    parser.add_argument("--rounds", type=int, default=2, help="ABBA rounds per batch size")
    parser.add_argument(
        "--decode-processes", type=int, default=0, help="the worker's DECODE_PROCESSES (0: its default)"
    )
    parser.add_argument("--submits", type=int, default=300, help="in-process submits timed by phase")
    parser.add_argument("--rate", type=float, default=150, help="submits/s against each gunicorn")
    parser.add_argument("--seconds", type=float, default=6, help="load duration per gunicorn")
    parser.add_argument("--database-url", default="", help="e.g. PostgreSQL; default a SQLite file")
    parser.add_argument("--part", choices=("all", "worker", "submit"), default="all")
    parser.add_argument("--quick", action="store_true", help="few jobs and requests (a smoke test)")
    args = parser.parse_args(argv)
    if args.quick:
        args.jobs, args.rounds, args.submits, args.rate, args.seconds = 32, 1, 30, 20, 2
    if args.part in ("all", "worker"):
        worker_part(args)
    if args.part in ("all", "submit"):
        submit_part(args)


if __name__ == "__main__":
    main()

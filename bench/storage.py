"""What keeping uploads in S3-compatible object storage costs: a local directory vs S3, in one run.

    python -m bench.storage [--jobs 40] [--e2e-jobs 15] [--rounds 2] [--quick]

Two services side by side on the benches' Redis DB (each with its own queue and SQLite file),
the same photos, the same tiny model: one with UPLOAD_DIR a local directory, the other with
UPLOAD_DIR=s3://... on a SeaweedFS started on loopback for this run (tests/integration/procs.py).

submit:      POST /api/v1/submit through the Flask test client: stage, check the header, store
             (rename vs PUT), row, enqueue. No worker runs meanwhile.
read:        what a worker does to get each of those uploads as a local file and read it
             (UploadStore.local_copy: the file itself vs a download into a temp file).
end to end:  a worker.py process per service (1 torch thread each), waiting; one job at a time,
             submit -> result seen by a client polling every 5 ms. The model is the tiny BLIP
             generating 3 tokens, nearly free, so the store's share is not lost in its noise.
Rounds alternate local/S3 in ABBA order so drift on a noisy machine hits both alike; the figures
are the ratios S3/local of the medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench import harness
from bench.harness import Service, median, percentile, table

SIDES = ("local", "s3")
TOKENS = 3


def submit_latencies(service: Service, jpegs: list[bytes]) -> list[float]:
    client = service.client
    latencies = []
    for jpeg in jpegs:
        started = time.perf_counter()
        service.submit(jpeg, client)
        latencies.append(time.perf_counter() - started)
    return latencies


def read_latencies(service: Service, names: list[str]) -> list[float]:
    latencies = []
    for name in names:
        started = time.perf_counter()
        with service.app.uploads.local_copy(name) as path:
            path.read_bytes()
        latencies.append(time.perf_counter() - started)
    return latencies


def upload_names(service: Service) -> list[str]:
    from imgsvc.storage import jobs

    with service.app.app_context():
        return [jobs.get_job(job_id).upload_name for job_id in service.submitted]


def end_to_end(service: Service, jpegs: list[bytes]) -> list[float]:
    """Submit one, poll until its result is there, next; the worker.py process is waiting."""
    client = service.client
    latencies = []
    for jpeg in jpegs:
        started = time.perf_counter()
        service.wait_result(service.submit(jpeg, client)["job_id"], client)
        latencies.append(time.perf_counter() - started)
    return latencies


def abba(
    measure: Callable[[Service, list[Any]], list[float]],
    services: dict[str, Service],
    inputs: dict[str, list[Any]],
    rounds: int,
) -> dict[str, list[float]]:
    """Split the inputs into ``rounds`` chunks; each chunk goes local then S3, the next S3 then local."""
    samples: dict[str, list[float]] = {side: [] for side in SIDES}
    for r in range(rounds):
        for side in SIDES if r % 2 == 0 else SIDES[::-1]:
            samples[side] += measure(services[side], inputs[side][r::rounds])
    return samples


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=40, help="submits measured per side")
    parser.add_argument("--e2e-jobs", type=int, default=15, help="end-to-end jobs per side")
    parser.add_argument("--rounds", type=int, default=2, help="ABBA rounds each measurement is split into")
    parser.add_argument("--quick", action="store_true", help="4 submits and 3 jobs per side (a smoke test)")
    args = parser.parse_args(argv)
    if args.quick:
        args.jobs, args.e2e_jobs = 4, 3
    rounds = max(1, min(args.rounds, args.jobs, args.e2e_jobs))

    from tests.integration.procs import SeaweedFS

    photos = harness.photos(args.jobs + args.e2e_jobs + 2)  # distinct: no dedupe hit on either side
    warm, submits, e2e = photos[:2], photos[2 : 2 + args.jobs], photos[2 + args.jobs :]
    size_kb = statistics.mean(len(p) for p in photos) / 1024
    harness.header(
        "storage: uploads in a local directory vs S3 (SeaweedFS on loopback)",
        photo_kb=round(size_kb),
        tokens=TOKENS,
    )
    with ExitStack() as stack:
        server = SeaweedFS(Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="imgsvc-s3-"))))
        server.start()
        stack.callback(server.stop)
        os.environ.update(server.env())  # boto3 here and in the worker.py processes finds it there
        os.environ["TORCH_THREADS"] = "1"  # two workers wait side by side on this machine's cores
        model = {"vision_model": str(harness.model_dir("tiny")), "max_new_tokens": TOKENS}
        services = {
            "local": stack.enter_context(harness.scratch_service(**model)),
            "s3": stack.enter_context(
                harness.scratch_service(upload_dir=f"s3://{server.BUCKET}/bench-{os.getpid()}", **model)
            ),
        }
        for service in services.values():
            submit_latencies(service, warm[:1])  # first request: connections, the boto3 client
        submit = abba(submit_latencies, services, {side: submits for side in SIDES}, rounds)
        names = {side: upload_names(service)[1:] for side, service in services.items()}  # [0]: warm-up
        read = abba(read_latencies, services, names, rounds)
        for service in services.values():  # both wait at once; an idle worker blocks on Redis
            stack.enter_context(harness.worker_process(service))
        for service in services.values():
            end_to_end(service, warm[1:])
        whole = abba(end_to_end, services, {side: e2e for side in SIDES}, rounds)

    print()
    rows = []
    for label, samples in (("submit", submit), ("worker read", read), ("submit -> result seen", whole)):
        local, s3 = (samples[side] for side in SIDES)
        rows.append(
            [
                label,
                len(local),
                f"{median(local) * 1000:.1f}",
                f"{percentile(local, 90) * 1000:.1f}",
                f"{median(s3) * 1000:.1f}",
                f"{percentile(s3, 90) * 1000:.1f}",
                f"{(median(s3) - median(local)) * 1000:+.1f}",
                f"{median(s3) / median(local):.2f}x",
            ]
        )
    table(
        ["per job", "n", "local p50 ms", "local p90", "S3 p50 ms", "S3 p90", "S3 - local", "S3/local"],
        rows,
    )


if __name__ == "__main__":
    main()

"""How many waiting clients one web process holds: ``Prefer: wait`` under the shipped gunicorn.conf.py.

    python -m bench waits [--threads 4,16,64] [--clients N] [--quick]

For each WEB_THREADS value, one gunicorn worker (``gunicorn -c gunicorn.conf.py wsgi:app``,
WEB_WORKERS=1, the shipped worker class) on the benches' Redis DB and a temporary SQLite file,
no describe worker (jobs stay queued). ``clients`` requests (default 2 x threads) ask at once
for the result of a queued job each, with ``Prefer: wait=30``. Measured while they are held:
how many the process holds waiting (Preference-Applied) and how many it answers at once; once
those are answered, how long /healthz takes (the threads kept free for other requests) and the
web process's CPU per second of holding (a waiting request blocks on a Redis notification: no SQL polls).
Then every job is cancelled, one transaction each, and each held request's answer is timed from
its job's write: the wake-up latency (write, commit, publish, wake, re-read the row, answer).
"""

from __future__ import annotations

import argparse
import http.client
import threading
import time
from dataclasses import dataclass

from bench import harness
from bench.api_load import cpu_seconds, gunicorn
from bench.harness import goal, percentile, table

WAIT = 30


@dataclass
class Answer:
    job_id: str
    applied: bool
    status: int
    finished_at: float


def ask(port: int, job_id: str, answers: list[Answer], lock: threading.Lock) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT + 30)
    try:
        connection.request("GET", f"/api/v1/result/{job_id}", headers={"Prefer": f"wait={WAIT}"})
        response = connection.getresponse()
        response.read()
        answer = Answer(
            job_id, response.getheader("Preference-Applied") is not None, response.status, time.monotonic()
        )
    finally:
        connection.close()
    with lock:
        answers.append(answer)


def probe(port: int) -> float:
    started = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", "/healthz")
        connection.getresponse().read()
    finally:
        connection.close()
    return time.perf_counter() - started


def measure(service: harness.Service, threads: int, clients: int) -> list[object]:
    from imgsvc.storage import jobs
    from imgsvc.storage.db import db

    env = service.environment() | {"WEB_WORKERS": "1", "WEB_THREADS": str(threads)}
    job_ids = [service.submit(harness.jpeg_of_size(2000))["job_id"] for _ in range(clients)]
    redis = service.app.redis
    answers: list[Answer] = []
    lock = threading.Lock()
    with gunicorn("wsgi:app", env, service.workdir / "gunicorn.log", "/healthz") as (port, master):
        probe(port)
        askers = [threading.Thread(target=ask, args=(port, j, answers, lock)) for j in job_ids]
        for asker in askers:
            asker.start()
        expected = min(clients, max(threads - 2, 0))
        deadline = time.monotonic() + 10
        while len(redis.pubsub_channels("imgsvc:job-changed:*")) < expected and time.monotonic() < deadline:
            time.sleep(0.05)
        held = len(redis.pubsub_channels("imgsvc:job-changed:*"))
        while len(answers) < clients - held and time.monotonic() < deadline:
            time.sleep(0.05)  # the ones answered at once are out of the way: only waiters are left
        cpu_before, hold_started = cpu_seconds(master), time.monotonic()
        health = [probe(port) for _ in range(10)]
        time.sleep(max(0.0, 2.0 - (time.monotonic() - hold_started)))
        cpu_per_second = (cpu_seconds(master) - cpu_before) / (time.monotonic() - hold_started)
        written_at: dict[str, float] = {}
        with service.app.app_context():
            for job_id in job_ids:
                written_at[job_id] = time.monotonic()
                jobs.mark_cancelled(job_id)  # one commit and one notification each, as the worker's
            db.session.remove()
        for asker in askers:
            asker.join()
    applied = [a for a in answers if a.applied]
    wake = [a.finished_at - written_at[a.job_id] for a in applied] or [float("nan")]
    return [
        threads,
        clients,
        held,
        len(applied),
        len(answers) - len(applied),
        f"{percentile(health, 50) * 1000:.1f}",
        f"{max(health) * 1000:.1f}",
        f"{cpu_per_second * 1000:.1f}",
        f"{percentile(wake, 50) * 1000:.1f}",
        f"{max(wake) * 1000:.1f}",
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", default="4,16,64", help="WEB_THREADS values, comma-separated")
    parser.add_argument(
        "--clients", type=int, default=0, help="waiting clients per run (default 2 x threads)"
    )
    parser.add_argument("--quick", action="store_true", help="WEB_THREADS=4 only (a smoke test)")
    args = parser.parse_args(argv)
    counts = [4] if args.quick else [int(t) for t in args.threads.split(",")]
    harness.header("waits: Prefer: wait clients held by one gunicorn worker (gunicorn.conf.py)", wait_s=WAIT)
    rows = []
    with harness.scratch_service() as service:
        for threads in counts:
            rows.append(measure(service, threads, args.clients or 2 * threads))
            print(f"  WEB_THREADS={threads}: done", flush=True)
    print()
    table(
        [
            "WEB_THREADS",
            "clients",
            "held",
            "applied",
            "at once",
            "healthz p50 ms",
            "healthz max ms",
            "web CPU ms/s held",
            "wake p50 ms",
            "wake max ms",
        ],
        rows,
    )
    print()
    for row in rows:
        threads, held, health_max = row[0], row[2], float(row[6])
        goal(
            f"WEB_THREADS={threads}: {max(threads - 2, 0)} clients held, /healthz under 100 ms meanwhile",
            held == max(threads - 2, 0) and health_max < 100,
            f"{held} held, /healthz max {health_max:.1f} ms",
        )

"""Memory: a real worker's RSS after loading the model and after N jobs; the web side without torch.

    python -m bench.memory [--jobs 1000] [--model tiny|builtin] [--quick]

The worker is ``python worker.py`` as in production (tiny random-weight BLIP captioner by
default, or the built-in EfficientNet + OCR describer), on the benches' Redis DB and a
temporary SQLite file. Jobs (distinct images) are submitted through HTTP in ten chunks;
after each chunk is done the worker's RSS is read from /proc. Growth is reported against
the RSS after model load and against the RSS after the first chunk (first calls allocate
caches and pools for good; growth after that is what a leak would look like).
Then a fresh process imports ``wsgi`` (the gunicorn entry point): torch and transformers
must not be in its sys.modules.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from bench import harness
from bench.harness import Service, goal, table
from imgsvc.config import PROJECT_ROOT

# VmRSS, not ru_maxrss: the latter survives exec, so it would report this bench's own torch.
WEB_PROBE = """
import json, sys
import wsgi
rss = next(line for line in open("/proc/self/status") if line.startswith("VmRSS:"))
print(json.dumps({
    "modules": {name: name in sys.modules for name in ("torch", "transformers", "PIL", "rq")},
    "rss_kb": int(rss.split()[1]),
}))
"""


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def wait_done(service: Service, count: int, timeout: float = 600) -> None:
    from imgsvc.storage import jobs
    from imgsvc.storage.db import db

    deadline = time.monotonic() + timeout
    with service.app.app_context():
        while True:
            finished = (
                db.session.query(jobs.Job)
                .filter(jobs.Job.status.in_([jobs.Status.DONE, jobs.Status.FAILED]))
                .count()
            )
            db.session.rollback()  # a fresh snapshot next time
            if finished >= count:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {finished} of {count} jobs finished in {timeout:.0f} s")
            time.sleep(0.1)


def web_probe(env: dict[str, str]) -> dict:
    output = subprocess.run(
        [sys.executable, "-c", WEB_PROBE],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(output.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--model", choices=["tiny", "builtin"], default="tiny")
    parser.add_argument("--quick", action="store_true", help="50 jobs (a smoke test)")
    args = parser.parse_args(argv)
    if args.quick:
        args.jobs = 50
    chunks = 10
    per_chunk = max(1, args.jobs // chunks)
    model = str(harness.model_dir("tiny")) if args.model == "tiny" else "builtin:efficientnet-lite0"
    harness.header("memory: worker RSS over many jobs; web without torch", model=args.model, jobs=args.jobs)

    jpegs = harness.photos(per_chunk * chunks)
    samples: list[tuple[int, float]] = []
    with harness.scratch_service(vision_model=model, max_new_tokens=harness.TOKENS) as service:
        with harness.worker_process(service) as worker:
            samples.append((0, rss_mb(worker.pid)))
            started = time.perf_counter()
            client = service.client
            for chunk in range(chunks):
                for jpeg in jpegs[chunk * per_chunk : (chunk + 1) * per_chunk]:
                    service.submit(jpeg, client)
                wait_done(service, (chunk + 1) * per_chunk)
                samples.append(((chunk + 1) * per_chunk, rss_mb(worker.pid)))
            elapsed = time.perf_counter() - started
        probe = web_probe(service.environment())

    loaded, warm, final = samples[0][1], samples[1][1], samples[-1][1]
    print(f"{samples[-1][0]} jobs in {elapsed:.1f} s\n")
    table(
        ["jobs done", "worker RSS MB", "vs after load", "vs after first chunk"],
        [
            [n, f"{mb:.1f}", f"{(mb / loaded - 1) * 100:+.1f} %", f"{(mb / warm - 1) * 100:+.1f} %"]
            for n, mb in samples
        ],
    )
    print(
        f"\nweb process (import wsgi): RSS {probe['rss_kb'] / 1024:.1f} MB, "
        + ", ".join(
            f"{name} {'loaded' if there else 'not loaded'}" for name, there in probe["modules"].items()
        )
    )
    print()
    growth_load = (final / loaded - 1) * 100
    growth_warm = (final / warm - 1) * 100
    full = args.jobs >= 1000
    goal(
        f"worker RSS growth < 5 % after model load, {args.jobs} jobs",
        growth_load < 5,
        f"{growth_load:+.1f} %",
        full,
    )
    goal(
        f"worker RSS growth < 5 % after the first chunk, {args.jobs} jobs",
        growth_warm < 5,
        f"{growth_warm:+.1f} %",
        full,
    )
    torch_free = not probe["modules"]["torch"] and not probe["modules"]["transformers"]
    goal("web process never loads torch", torch_free, f"modules: {probe['modules']}")
    if not torch_free:
        sys.exit(1)


if __name__ == "__main__":
    main()

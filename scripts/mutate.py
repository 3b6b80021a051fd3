"""Mutation testing (mutmut 3) of the modules that carry imgsvc's guarantees, one module at a time.

    .venv/bin/python scripts/mutate.py                          # every module in MODULE_TESTS
    .venv/bin/python scripts/mutate.py imgsvc/storage/jobs.py   # one (or several) modules
    .venv/bin/python scripts/mutate.py imgsvc/storage/jobs.py --functions "mark_* find_cached"
    make mutate [MODULE=imgsvc/storage/jobs.py] [FUNCTIONS="mark_*"]

Why it is built this way:

- **A scratch copy per module** (``.mutate/<module>/``, rebuilt on every run): mutmut writes its
  ``mutants/`` tree and its settings where it runs, so each module gets its own copy of the
  tracked files with a ``[tool.mutmut]`` section naming that module and its test files. The work
  tree is never touched, and a run needs no edits after the code changed.
- **Only the tests that exercise a module** (:data:`MODULE_TESTS`), and inside those mutmut runs,
  per mutant, only the tests that called the mutated function (it records that in a first clean
  run). The live security suite (gunicorn subprocesses), the Chromium page test, the fuzz and
  schemathesis suites, the real-photo test and :data:`SLOW_TESTS` stay out: slow, and not where
  these guarantees are checked (``make test`` runs them all).
- **Subprocess workers see the mutant.** The mutated copy lives in ``mutants/``; ``PROJECT_ROOT``
  follows it (it is computed from ``imgsvc/config.py``), so ``python worker.py`` started by a test
  with ``cwd=PROJECT_ROOT`` imports the mutated package, and ``tests.conftest.worker_env`` passes
  ``MUTANT_UNDER_TEST`` through. mutmut only records which tests reach a function inside the
  pytest process, though: code reached only in a subprocess has no tests and shows as "no tests".
- **One mutant at a time** (``--max-children 1``): every test uses the same Redis DB
  (``TEST_REDIS_URL``) and PostgreSQL database, which two concurrent runs would wipe under each
  other's feet.
- **forkserver isolation**: mutmut forks each mutant's run from a process that imported pytest
  but never ran torch, so no forked child inherits a torch thread pool.
- **The tiny test model is built once** (``TEST_MODEL_CACHE``), not in each mutant's pytest
  session, where it cost ~10 s a mutant; log calls are not mutated (their words are no guarantee).

It ends with a table: per module, mutants killed, survived, timed out, with no covering test,
and the score = (killed + timeout) / (mutants that had tests). Survivors' diffs are written to
``.mutate/<module>/survivors.diff`` for review.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from fnmatch import fnmatch
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".mutate"
MUTMUT = Path(sys.executable).with_name("mutmut")

API = "tests/integration/test_api.py"
#: what was tests/integration/test_features.py, split by concern
FEATURES = [
    "tests/integration/test_batch_submits.py",
    "tests/integration/test_listing_and_cancel.py",
    "tests/integration/test_job_options.py",
    "tests/integration/test_dedupe.py",
    "tests/integration/test_job_webhooks.py",
    "tests/integration/test_api_keys_and_rate_limits.py",
]
BATCHING = "tests/integration/test_batching.py"
OPS = "tests/integration/test_ops.py"
FAULTS = "tests/integration/test_faults.py"
LIVENESS = "tests/integration/test_liveness.py"
LIMITS = "tests/integration/test_request_limits.py"  # other hosts' workers: only the heartbeat tells

#: module -> the test files that exercise its guarantees (the whole list runs once, clean, first).
MODULE_TESTS: dict[str, list[str]] = {
    "imgsvc/queue/connection.py": [API, *FEATURES, OPS, FAULTS],
    "imgsvc/queue/tasks.py": [API, *FEATURES, BATCHING, FAULTS],
    "imgsvc/queue/worker.py": [API, BATCHING, FAULTS],
    "imgsvc/queue/reaper.py": [FAULTS, LIVENESS, OPS],
    "imgsvc/queue/webhooks.py": [
        "tests/queue/test_webhooks.py",
        "tests/security/test_webhook_delivery.py",
        *FEATURES,
    ],
    "imgsvc/queue/fetches.py": ["tests/queue/test_fetches.py", "tests/integration/test_image_urls.py"],
    "imgsvc/outbound_urls.py": [
        "tests/core/test_outbound_urls.py",
        "tests/queue/test_fetches.py",
        "tests/queue/test_webhooks.py",
        "tests/security/test_webhook_delivery.py",
        *FEATURES,
    ],
    "imgsvc/results.py": ["tests/core/test_results.py", API, "tests/integration/test_job_rows.py"],
    "imgsvc/storage/jobs.py": [API, *FEATURES, BATCHING, OPS, FAULTS],
    "imgsvc/storage/uploads.py": [
        "tests/storage/test_uploads.py",
        API,
        "tests/security/test_infrastructure_faults.py",
    ],
    "imgsvc/storage/retention.py": [OPS],
    "imgsvc/storage/db.py": [OPS, "tests/security/test_infrastructure_faults.py"],
    "imgsvc/web/api.py": [API, *FEATURES, BATCHING, LIMITS],
    "imgsvc/submissions.py": ["tests/core/test_submissions.py", API, *FEATURES, BATCHING, LIMITS],
    "imgsvc/web/auth.py": [*FEATURES, LIMITS],
    "imgsvc/images.py": ["tests/core/test_images.py", API, LIMITS],
    "imgsvc/quotas.py": [LIMITS],
    "imgsvc/web/health.py": [LIMITS, OPS],
    "imgsvc/web/dashboard.py": [OPS, LIMITS],
    "imgsvc/vision/scene/sentences.py": ["tests/vision/test_scene_sentences.py"],
}

#: Tests that mostly wait on subprocesses and signals (5-30 s each): `make test` runs them, a
#: mutation run does not, or every surviving mutant of a busy function would pay for them again.
#: Also the one test that cannot pass in a mutated copy (see its comment).
SLOW_TESTS = [
    "sigkilled",
    "sigterm",
    "worker_script_runs",
    "unloadable_model",
    "survive_its_restart",
    # Measures a bare interpreter's memory: mutmut's trampolines in the mutated copy import more.
    "never_decodes_or_even_imports_pillow",
]

#: Besides imgsvc/ and tests/: what tests start as subprocesses from PROJECT_ROOT, and bench/,
#: whose bomb builders tests/core/test_images.py imports.
ALSO_COPY = ["worker.py", "wsgi.py", "gunicorn.conf.py", "pyproject.toml", "bench"]
KILLED = {"killed", "timeout"}
#: Lines whose mutants say nothing about a guarantee: log calls (their words and extras).
DO_NOT_MUTATE = [r"^\s*log\.(debug|info|warning|error|exception|critical)\("]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help=f"default: all {len(MODULE_TESTS)} of MODULE_TESTS")
    parser.add_argument(
        "--functions",
        default="",
        help="only the mutants of these functions (space-separated globs, e.g. 'mark_* _transition')",
    )
    args = parser.parse_args(argv)
    modules = args.modules or list(MODULE_TESTS)
    unknown = [m for m in modules if m not in MODULE_TESTS]
    if unknown:
        parser.error(f"no test mapping for {', '.join(unknown)}; known: {', '.join(MODULE_TESTS)}")
    rows = []
    for module in modules:
        started = time.monotonic()
        counts, survivors = mutate(module, args.functions.split())
        rows.append((module, counts, time.monotonic() - started, survivors))
    print_table(rows)
    return 0


def mutate(module: str, functions: list[str]) -> tuple[Counter, list[str]]:
    """Run mutmut on ``module`` in a fresh scratch copy; the count of mutants per status."""
    work = WORK / module.removesuffix(".py").replace("/", ".")
    if work.exists():
        shutil.rmtree(work)
    copy_tree(work)
    with (work / "pyproject.toml").open("a") as config:
        config.write(mutmut_config(module))
    print(f"\n=== {module}: {', '.join(MODULE_TESTS[module])}", flush=True)
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TEST_MODEL_CACHE": str(model_cache())}
    dotted = module.removesuffix(".py").replace("/", ".")
    # mutmut names mutants <module>.x_<function>__mutmut_<n> (methods: xǁClassǁmethod__mutmut_<n>)
    wanted = [f"{dotted}.x*{function}__mutmut_*" for function in functions]
    subprocess.run([str(MUTMUT), "run", "--max-children", "1", *wanted], cwd=work, env=env, check=False)
    meta = work / "mutants" / f"{module}.meta"
    exit_codes = json.loads(meta.read_text())["exit_code_by_key"] if meta.exists() else {}
    if wanted:
        exit_codes = {k: v for k, v in exit_codes.items() if any(fnmatch(k, w) for w in wanted)}
    from mutmut.stats import status_by_exit_code

    statuses = {name: status_by_exit_code[code] for name, code in exit_codes.items()}
    survivors = sorted(name for name, status in statuses.items() if status == "survived")
    diffs = [
        subprocess.run([str(MUTMUT), "show", name], cwd=work, capture_output=True, text=True).stdout
        for name in survivors
    ]
    (work / "survivors.diff").write_text("\n".join(diffs))
    return Counter(statuses.values()), survivors


def model_cache() -> Path:
    """Where the tiny test model is kept across mutants: one per version of the code that builds it."""
    import transformers

    recipe = (
        ROOT / "imgsvc" / "vision" / "testing_utils.py"
    ).read_bytes() + transformers.__version__.encode()
    return WORK / f"model-{hashlib.sha256(recipe).hexdigest()[:12]}"


def copy_tree(work: Path) -> None:
    """The files git would check out, as they are in the work tree now (committed or not)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "imgsvc", "tests", *ALSO_COPY],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in listed:
        source = ROOT / name
        if source.is_file():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, work / name)


def mutmut_config(module: str) -> str:
    def toml_list(items: list[str]) -> str:
        return "[" + ", ".join(json.dumps(item) for item in items) + "]"

    not_slow = f"not ({' or '.join(SLOW_TESTS)})"
    return f"""
[tool.mutmut]
source_paths = ["imgsvc"]
only_mutate = {toml_list([module])}
also_copy = {toml_list(ALSO_COPY)}
pytest_add_cli_args_test_selection = {toml_list([*MODULE_TESTS[module], "-k", not_slow])}
pytest_add_cli_args = ["-p", "no:cacheprovider"]
process_isolation = "forkserver"
do_not_mutate_patterns = {toml_list(DO_NOT_MUTATE)}
"""


def print_table(rows: list[tuple[str, Counter, float, list[str]]]) -> None:
    columns = ("mutants", "killed", "timeout", "survived", "no tests", "other", "score", "wall")
    header = f"{'module':<30} " + " ".join(f"{c:>8}" for c in columns)
    print("\n" + header + "\n" + "-" * len(header))
    for module, counts, wall, _ in rows:
        total = sum(counts.values())
        known = {"killed", "timeout", "survived", "no tests"}
        other = sum(n for status, n in counts.items() if status not in known)
        tested = total - counts["no tests"]
        score = f"{100 * sum(counts[s] for s in KILLED) / tested:.1f}%" if tested else "-"
        cells = (total, counts["killed"], counts["timeout"], counts["survived"], counts["no tests"], other)
        print(f"{module:<30} " + " ".join(f"{c:>8}" for c in (*cells, score, f"{wall / 60:.1f}min")))
    for module, _, _, survivors in rows:
        if survivors:
            slug = module.removesuffix(".py").replace("/", ".")
            print(f"\nsurvivors of {module} (diffs in .mutate/{slug}/survivors.diff):")
            for name in survivors:
                print(f"  {name}")


if __name__ == "__main__":
    sys.exit(main())

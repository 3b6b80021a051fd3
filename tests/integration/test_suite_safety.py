"""The test suite itself must never destroy data it did not write.

Each case runs a tiny pytest session in a subprocess, with this suite's conftest as a plugin,
against a throw-away redis-server, so no real Redis DB is put at risk to prove it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from redis import Redis

from imgsvc.config import PROJECT_ROOT
from tests.conftest import OWNER_KEY
from tests.integration.procs import RedisServer

INNER_TEST = """
def test_uses_the_test_redis(redis_db):
    redis_db.set("written-by-the-test", "1")
"""


@pytest.fixture()
def private_redis(tmp_path: Path):
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.kill()


def run_suite(tmp_path: Path, redis_url: str) -> subprocess.CompletedProcess:
    test_file = tmp_path / "test_inner.py"
    test_file.write_text(INNER_TEST)
    isolated = ["-p", "no:cacheprovider", "--rootdir", str(tmp_path), "-c", "/dev/null"]
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", *isolated, "-p", "tests.conftest", str(test_file)],
        cwd=PROJECT_ROOT,
        env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "TEST_REDIS_URL": redis_url},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_suite_refuses_a_redis_db_holding_someone_elses_keys(tmp_path, private_redis):
    url = private_redis.url.removesuffix("/0") + "/3"  # any DB index works, not just the default
    other = Redis.from_url(url)
    other.set("someone:else", "precious")

    proc = run_suite(tmp_path, url)

    assert proc.returncode == pytest.ExitCode.USAGE_ERROR, proc.stdout + proc.stderr
    assert "holds 1 key(s) that the tests did not write" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert other.get("someone:else") == b"precious" and other.dbsize() == 1


def test_the_suite_takes_an_empty_db_and_leaves_only_its_mark(tmp_path, private_redis):
    connection = Redis.from_url(private_redis.url)

    first = run_suite(tmp_path, private_redis.url)
    assert first.returncode == 0, first.stdout + first.stderr
    assert connection.keys() == [OWNER_KEY.encode()]

    # A run that was killed half-way leaves its own keys behind: the next run recognises them.
    connection.set("rq:queue:imgsvc", "left over")
    second = run_suite(tmp_path, private_redis.url)
    assert second.returncode == 0, second.stdout + second.stderr
    assert connection.keys() == [OWNER_KEY.encode()]


POSTGRES_TEST = """
def test_uses_postgres(postgres_url):
    pass
"""


@pytest.mark.parametrize("required", [False, True])
def test_without_postgresql_its_tests_skip_saying_why_unless_ci_requires_them(tmp_path, required):
    from tests.integration.procs import free_port

    test_file = tmp_path / "test_pg.py"
    test_file.write_text(POSTGRES_TEST)
    env = {
        "PATH": "/usr/bin:/bin",
        "HF_HUB_OFFLINE": "1",
        "TEST_POSTGRES_URL": f"postgresql+psycopg2://postgres@127.0.0.1:{free_port()}/test",  # nothing there
    }
    if required:
        env["TEST_POSTGRES_REQUIRED"] = "1"  # what .ci/run sets
    isolated = ["-p", "no:cacheprovider", "--rootdir", str(tmp_path), "-c", "/dev/null", "-rs"]
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", *isolated, "-p", "tests.conftest", str(test_file)],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if required:
        assert "1 error" in proc.stdout, proc.stdout[-2000:]
    else:
        assert proc.returncode == 0 and "1 skipped" in proc.stdout, proc.stdout[-2000:]
        assert "needs PostgreSQL at postgresql+psycopg2://postgres@127.0.0.1:" in proc.stdout
        assert "database test, trust auth" in proc.stdout

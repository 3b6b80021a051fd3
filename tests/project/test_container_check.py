"""scripts/container_check.py's own logic: what it reads from a rendered compose config.

The check itself needs root, buildah and a built image (``make container-check``); these are the
parts that decide what it runs, tested on small rendered configs.
"""

from __future__ import annotations

import importlib.util
import sys

import pytest

from imgsvc.config import PROJECT_ROOT

SCRIPT = PROJECT_ROOT / "scripts" / "container_check.py"
_spec = importlib.util.spec_from_file_location("container_check", SCRIPT)
check = importlib.util.module_from_spec(_spec)
sys.modules["container_check"] = check
_spec.loader.exec_module(check)


def test_ports_come_from_published_exposed_and_service_urls(tmp_path):
    (tmp_path / "proxy.conf").write_text("location / { proxy_pass http://web:8000; }\n")
    config = {
        "services": {
            "redis": {"image": "redis:7"},
            "db": {"image": "postgres:16"},
            "web": {"environment": {"REDIS_URL": "redis://redis:6379/0"}, "ports": [{"target": 8000}]},
            "proxy": {
                "ports": [{"target": 80, "published": "8080"}],
                "volumes": [{"type": "bind", "source": str(tmp_path / "proxy.conf"), "target": "/etc/x"}],
            },
            "s3": {"expose": ["8333/tcp"], "environment": {"NOT_A_PEER": "http://my-redis:7000"}},
        }
    }
    ports = check.service_ports(config, tmp_path)
    assert ports == {"redis": {6379}, "db": set(), "web": {8000}, "proxy": {80}, "s3": {8333}}


def test_services_start_after_what_they_depend_on():
    services = {
        "web": {"depends_on": {"redis": {}, "init-db": {}}},
        "init-db": {"depends_on": {"redis": {}}},
        "redis": {},
        "dashboard": {"depends_on": {"redis": {}}},
    }
    order = check.start_order(services)
    assert order.index("redis") < order.index("init-db") < order.index("web")
    assert order.index("redis") < order.index("dashboard")
    with pytest.raises(check.CheckFailed, match="cycle"):
        check.start_order({"a": {"depends_on": {"b": {}}}, "b": {"depends_on": {"a": {}}}})


def test_compose_escapes_and_durations_are_read_as_a_container_engine_does():
    assert check.unescape(["sh", "-c", 'test -n "$$USER"']) == ["sh", "-c", 'test -n "$USER"']
    assert check.seconds("2m", 10) == 120
    assert check.seconds("1m30s", 10) == 90
    assert check.seconds(None, 10) == 10


def test_env_is_the_example_with_the_values_the_readme_asks_for(tmp_path):
    example = "# comment\nSECRET_KEY=change-me\nRQ_DASHBOARD_USERNAME=\nWEB_PORT=8000\n"
    (tmp_path / ".env.example").write_text(example)
    values = check.write_env(tmp_path)
    assert values["SECRET_KEY"] not in {"", "change-me"} and values["RQ_DASHBOARD_USERNAME"]
    assert values["WEB_PORT"] == "8000"
    assert (tmp_path / ".env").read_text().startswith("# comment\n")

"""Settings come from the environment with the documented names and defaults."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from imgsvc.config import PROJECT_ROOT, ConfigError, Settings


def test_defaults_are_the_documented_ones():
    s = Settings.from_env({})
    assert s.web_port == 8000
    assert s.redis_url == "redis://localhost:6379/0"
    assert s.max_file_size == 10 * 1024 * 1024
    assert s.task_max_retries == 3 and s.task_retry_delay == 60
    assert s.vision_model == "auto"
    assert s.caption_model == "Salesforce/blip-image-captioning-base"
    assert s.sqlalchemy_url == f"sqlite:///{PROJECT_ROOT / 'instance' / 'imgsvc.sqlite'}"


def test_environment_overrides_and_types():
    s = Settings.from_env(
        {
            "WEB_PORT": "9000",
            "MAX_FILE_SIZE": "1234",
            "UPLOAD_DIR": "/tmp/somewhere",
            "DATABASE_URL": "postgresql://u@h/db",
            "TASK_MAX_RETRIES": "0",
            "VISION_MODEL": "builtin:efficientnet-lite2",
        }
    )
    assert s.web_port == 9000 and s.max_file_size == 1234
    assert s.upload_dir == Path("/tmp/somewhere")
    assert s.sqlalchemy_url == "postgresql://u@h/db"
    assert s.task_max_retries == 0
    assert s.vision_model == "builtin:efficientnet-lite2"


@pytest.mark.parametrize(
    "env",
    [
        {"WEB_PORT": "eighty"},
        {"MAX_FILE_SIZE": "0"},
        {"TASK_RETRY_DELAY": "-1"},
        {"OCR": "sometimes"},
        {"QUANTIZE": "int4"},
        {"DTYPE": "float8"},
        {"DECODE_PROCESSES": "-1"},
        {"FETCH_CAPTIONER": "sometimes"},
        {"WEBHOOK_ALLOW_PRIVATE": "maybe"},
    ],
)
def test_bad_values_fail_loudly(env):
    with pytest.raises(ConfigError):
        Settings.from_env(env)


def test_env_example_documents_every_setting():
    from dataclasses import fields

    example = (PROJECT_ROOT / ".env.example").read_text()
    readme = (PROJECT_ROOT / "docs" / "configuration.md").read_text()
    for f in fields(Settings):
        name = f.metadata["env"]
        assert name in example, f"{name} missing from .env.example"
        assert f"`{name}`" in readme, f"{name} missing from docs/configuration.md"


def test_configuration_page_names_only_real_settings_with_their_defaults():
    # The other direction of the check above: a row for a setting that was renamed or removed, or a
    # default that drifted from the code, would send a reader after something that is not there.
    from dataclasses import fields

    by_env = {f.metadata["env"]: f for f in fields(Settings)}
    page = (PROJECT_ROOT / "docs" / "configuration.md").read_text()
    rows = re.findall(r"^\| `([A-Z0-9_]+)` \| ([^|]*) \|", page, re.M)
    assert len(rows) == len(by_env), "every setting has exactly one row"
    defaults = Settings()
    for name, default in rows:
        assert name in by_env, f"docs/configuration.md names {name}, which config.py does not read"
        shown = re.match(r"`([^`]*)`", default.strip())
        if shown:  # "empty" and prose defaults are not literal values
            assert Settings.from_env({name: shown.group(1)}) == defaults, (
                f"{name}'s default is not {shown.group(1)}"
            )


def test_env_example_values_are_the_defaults_except_the_secret_key():
    # Its first line says so; SECRET_KEY is the one exception, and the file says that next to it.
    example = (PROJECT_ROOT / ".env.example").read_text()
    assigned = dict(re.findall(r"^([A-Z0-9_]+)=(.*)$", example, re.M))
    assert "except SECRET_KEY" in example.splitlines()[1]
    defaults = Settings()
    for name, value in assigned.items():
        if name == "SECRET_KEY" or name.startswith(("AWS_", "S3_")):
            continue
        assert Settings.from_env({name: value}) == defaults, (
            f".env.example's {name}={value} is not the default"
        )

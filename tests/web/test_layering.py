"""The web side never imports torch or transformers: gunicorn workers stay small and start fast."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from imgsvc.config import PROJECT_ROOT

PROBE = """
import json, sys
import wsgi
print(json.dumps(sorted(name for name in ("torch", "transformers") if name in sys.modules)))
"""


def test_importing_the_wsgi_app_loads_no_model_library(tmp_path: Path):
    # A fresh interpreter: this test process may have imported torch for other tests.
    env = os.environ | {
        "DATABASE_URL": f"sqlite:///{tmp_path / 'web.sqlite'}",
        "UPLOAD_DIR": str(tmp_path / "uploads"),
    }
    result = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []

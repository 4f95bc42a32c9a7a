# syntax=docker/dockerfile:1
# sernet worker image: Faust worker + int8 Light-SERNet (onnxruntime), model artifact inside.
#
# Build context is the repository root:
#   docker build -f deploy/docker/worker.Dockerfile -t sernet-worker:0.1.0 .
# BuildKit reads deploy/docker/worker.Dockerfile.dockerignore (an allowlist) for this build.
# model_artifacts/ must hold manifest.json and the model files it lists: the build stops here if
# the manifest is missing, and the worker re-checks every sha256 at start and refuses a mismatch.
# For reproducible production builds pin the base image by digest (python:3.11-slim-bookworm@sha256:...).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY . .
# Non-editable install into the venv: the runtime stage needs neither /src nor a compiler.
# Dependencies at the versions of the lock file (scripts/lock.sh), then the package itself.
RUN pip install --no-cache-dir -r requirements/worker.txt \
 && pip install --no-cache-dir --no-deps "./[worker]" \
 && test -f model_artifacts/manifest.json \
    || { echo "model_artifacts/manifest.json missing: export or fetch the model artifact before building" >&2; exit 1; }

FROM ${PYTHON_IMAGE} AS runtime
# libsndfile1: soundfile's runtime library (the x86_64 wheel bundles one; arm64 edge builds may not).
RUN apt-get update \
 && apt-get install -y --no-install-recommends libsndfile1 \
 && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 sernet \
 && useradd --system --uid 10001 --gid sernet --home-dir /var/lib/sernet --no-create-home \
      --shell /usr/sbin/nologin sernet \
 && mkdir -p /var/lib/sernet \
 && chown sernet:sernet /var/lib/sernet
COPY --from=build /opt/venv /opt/venv
# Read-only for the worker user: the artifact is verified by checksum at load.
COPY --from=build /src/model_artifacts /opt/sernet/model_artifacts
ENV PATH=/opt/venv/bin:$PATH OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SERNET_MODEL_DIR=/opt/sernet/model_artifacts \
    SERNET_WEB_PORT=6066
# Faust keeps its data dir under the working directory: the only path the worker writes
# (mount an emptyDir/tmpfs here when the root filesystem is read-only).
WORKDIR /var/lib/sernet
USER 10001:10001
EXPOSE 6066
# Liveness via the worker's own /healthz; python's urllib so the image needs no curl.
# urlopen raises on connection errors and HTTP >= 400, so the exit status is the verdict.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('SERNET_WEB_PORT', '6066'), timeout=3)"]
ENTRYPOINT ["sernet", "worker"]

# syntax=docker/dockerfile:1
# sernet producer image for edge nodes: the core package only (numpy, scipy, msgpack, aiokafka,
# soundfile, click, rich, structlog). No onnxruntime, no torch, no model artifact.
#
# Build context is the repository root:
#   docker build -f deploy/docker/producer.Dockerfile -t sernet-producer:0.1.0 .
# BuildKit reads deploy/docker/producer.Dockerfile.dockerignore (an allowlist) for this build.
# Microphone capture (`sernet produce --mic`) needs the [mic] extra and PortAudio; it is left out
# of this image on purpose: build a variant if an edge node captures live audio.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY . .
# Core install: no extras. tests/test_deploy.py checks this line never pulls in onnxruntime/torch.
RUN pip install --no-cache-dir -r requirements/base.txt \
 && pip install --no-cache-dir --no-deps .

FROM ${PYTHON_IMAGE} AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends libsndfile1 \
 && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 sernet \
 && useradd --system --uid 10001 --gid sernet --home-dir /var/lib/sernet --no-create-home \
      --shell /usr/sbin/nologin sernet \
 && mkdir -p /var/lib/sernet \
 && chown sernet:sernet /var/lib/sernet
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /var/lib/sernet
USER 10001:10001
ENTRYPOINT ["sernet", "produce"]

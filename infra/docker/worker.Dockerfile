# syntax=docker/dockerfile:1.7
# A Kiln worker: Celery consuming jobs, running the diffusion runtime on one GPU. Build from the
# repository root:
#   docker build -f infra/docker/worker.Dockerfile -t kiln-worker:0.1.0-cuda .
# CPU-only image (same code, CPU torch wheel, no CUDA libraries pulled in):
#   docker build -f infra/docker/worker.Dockerfile --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu -t kiln-worker:0.1.0-cpu .
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu22.04

# ---- build: Python 3.11 venv with torch (CUDA wheel) and the pinned requirements ---------------
FROM ${CUDA_IMAGE} AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
 && rm -rf /var/lib/apt/lists/*
RUN python3.11 -m venv /opt/venv
# torch first, from PyTorch's index for this CUDA (its wheels carry cuDNN/cuBLAS themselves).
RUN /opt/venv/bin/pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
COPY infra/docker/requirements-worker.txt /tmp/requirements-worker.txt
RUN /opt/venv/bin/pip install --no-deps -r /tmp/requirements-worker.txt \
 && /opt/venv/bin/pip check
# The bundled tiny model, written once here so a fresh stack serves something offline.
COPY shared /app/shared
COPY worker /app/worker
RUN cd /app && /opt/venv/bin/python -m worker.bundled /opt/kiln/models/kiln-ddpm-tiny

# ---- runtime: CUDA runtime, Python, the venv, the code, a non-root user ------------------------
FROM ${CUDA_IMAGE} AS runtime
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 kiln \
 && useradd --system --uid 10001 --gid kiln --home-dir /home/kiln --create-home kiln \
 && mkdir -p /home/kiln/.cache/huggingface && chown -R kiln:kiln /home/kiln
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/kiln/models /opt/kiln/models
WORKDIR /app
COPY --chown=root:root shared /app/shared
COPY --chown=root:root worker /app/worker
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HOME=/home/kiln/.cache/huggingface \
    KILN_MODELS_DIR=/opt/kiln/models \
    KILN_METRICS_PORT=9400 \
    KILN_LOG_FORMAT=json
USER 10001:10001
EXPOSE 9400
# Celery's warm shutdown: SIGTERM stops taking jobs and lets running ones finish.
STOPSIGNAL SIGTERM
# /healthz on the metrics port: 200 once the worker is ready and Redis answers.
HEALTHCHECK --interval=20s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; p = os.environ.get('KILN_METRICS_PORT', '9400'); p == '0' or urllib.request.urlopen(f'http://127.0.0.1:{p}/healthz', timeout=4)"]
# The same command as shared.localstack.worker_command (tests/infra/test_entrypoints.py checks it).
CMD ["python", "-m", "worker"]

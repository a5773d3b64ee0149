# syntax=docker/dockerfile:1.7
# The Kiln API: Flask under gunicorn. No torch, no model runtime: the image is small and the
# API starts in about a second. Build from the repository root:
#   docker build -f infra/docker/api.Dockerfile -t kiln-api:0.1.0 .
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ---- build: a virtualenv with the pinned requirements ------------------------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
COPY infra/docker/requirements-api.txt /tmp/requirements-api.txt
RUN /opt/venv/bin/pip install --no-deps -r /tmp/requirements-api.txt \
 && /opt/venv/bin/pip check

# ---- runtime: the venv and the API's source, as a non-root user --------------------------------
FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 kiln \
 && useradd --system --uid 10001 --gid kiln --home-dir /home/kiln --create-home kiln
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# Only what the API imports: api/ and shared/ (never worker/, which needs torch).
COPY --chown=root:root api /app/api
COPY --chown=root:root shared /app/shared
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    KILN_LOG_FORMAT=json
USER 10001:10001
EXPOSE 8000
# /healthz answers 200 only while Redis and the output storage answer.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
# The same command as shared.localstack.api_command (tests/infra/test_entrypoints.py checks it).
CMD ["python", "-m", "gunicorn", "--bind", "0.0.0.0:8000", "--workers", "2", "--threads", "8", \
     "--worker-class", "api.gunicorn_worker.KilnWorker", "--graceful-timeout", "10", "--access-logfile", "-", "api.wsgi:app"]

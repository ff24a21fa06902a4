# syntax=docker/dockerfile:1
#
# sse-service image: `docker build -t sse-service .`
#   runs `sse-service serve` on 0.0.0.0:8005 as UID 10001,
#   needs no writable path (works with a read-only root filesystem).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- builder: a virtualenv with the dependencies, then the package ----------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

WORKDIR /build
RUN python -m venv /opt/venv

# Dependencies first, from pyproject.toml alone: this layer is rebuilt only
# when pyproject.toml changes, not on every source edit.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.txt \
    && pip install --no-cache-dir -r requirements.txt

# Then the package itself, without touching the dependencies again.
COPY README.md ./
COPY src ./src
RUN pip install --no-cache-dir --no-deps . \
    && python -m compileall -q /opt/venv

# --- runtime ------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="sse-service" \
      org.opencontainers.image.description="Per-user Server-Sent Events streams of task updates" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONFAULTHANDLER=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HOME=/home/app

RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/app \
       --no-create-home --shell /usr/sbin/nologin app

# Owned by root and read-only for the app user: nothing is written at runtime.
COPY --from=builder /opt/venv /opt/venv

WORKDIR /home/app
USER 10001:10001

EXPOSE 8005

HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('SSE_PORT', '8005'); sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:' + port + '/healthz', timeout=3).status == 200 else 1)"]

ENTRYPOINT ["sse-service"]
CMD ["serve"]

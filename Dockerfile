# Backsync production image: `backsync api` by default; the same image runs
# `backsync worker` and `backsync migrate` (see docker-compose.yml).
#
#   docker build -t backsync .
#   docker run --rm -e BACKSYNC_DATABASE_URL=... backsync backsync migrate
#
# The install steps are the ones scripts/check-install proves without Docker: the
# exact dependency versions of requirements.lock (scripts/lock writes it), then the
# wheel built from the sources, installed (non-editable) without letting pip pick
# any other version, then `pip check` that the lock satisfies the wheel's
# requirements. The alembic migrations ship inside the wheel (service/_migrations).

# Both stages must use the same base: the venv's interpreter is a symlink to it.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore

# `build` lives in its own venv so /opt/venv holds only Backsync and its dependencies.
RUN python -m venv /opt/build-tools \
    && /opt/build-tools/bin/pip install build \
    && python -m venv /opt/venv

WORKDIR /src

# Dependencies first, in their own layer: rebuilt only when the lock changes.
COPY requirements.lock ./
RUN /opt/venv/bin/pip install -r requirements.lock

# Then the sources the wheel is built from (the hatchling config in pyproject.toml
# force-includes alembic/ and alembic.ini as service/_migrations).
COPY pyproject.toml README.md alembic.ini ./
COPY alembic ./alembic
COPY service ./service
RUN /opt/build-tools/bin/python -m build --wheel --outdir /tmp/dist . \
    && /opt/venv/bin/pip install --no-deps /tmp/dist/*.whl \
    && /opt/venv/bin/pip check


FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="backsync" \
      org.opencontainers.image.description="Self-hosted background sync: API, arq worker and migrations"

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    BACKSYNC_HOST=0.0.0.0 \
    BACKSYNC_PORT=8000 \
    BACKSYNC_LOG_FORMAT=json

RUN groupadd --system --gid 10001 backsync \
    && useradd --system --uid 10001 --gid backsync --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin backsync \
    && mkdir -p /app \
    && chown backsync:backsync /app

COPY --from=builder /opt/venv /opt/venv

WORKDIR /app
USER 10001:10001

EXPOSE 8000

# Liveness only (no curl in slim images). /readyz is for orchestrators that should
# also wait on the database, Redis and migrations. Exits non-zero on any error or
# non-2xx answer.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('BACKSYNC_PORT', '8000'), timeout=4)"]

CMD ["backsync", "api"]

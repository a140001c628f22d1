# datesync: the all-in-one service (`datesync run`: migrations, daemon and web in one process).
# Give it DATABASE_URL (Neon's pooled URL is fine; LISTEN uses the direct endpoint, derived or from
# DATABASE_DIRECT_URL). Without DATABASE_URL it would start an embedded PostgreSQL inside the container,
# whose data is lost with the container: fine for a demo, never for production.
# Bound to 0.0.0.0, the web answers only loopback Host names (and RENDER_EXTERNAL_HOSTNAME on Render): set
# DATESYNC_ALLOWED_HOSTS to the public name(s) elsewhere, and DATESYNC_TRUSTED_PROXIES behind a proxy.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOST=0.0.0.0 \
    PORT=8000 \
    LOG_FORMAT=json \
    DATESYNC_DATA_DIR=/home/datesync/data

RUN groupadd --system --gid 10001 datesync \
    && useradd --system --uid 10001 --gid datesync --create-home datesync

WORKDIR /app
COPY pyproject.toml README.md ./
COPY daemon ./daemon
COPY web ./web
COPY datesync ./datesync
# Runtime dependencies only (no dev extra). PIP_NO_CACHE_DIR leaves no cache behind.
RUN pip install --no-compile .

# Your own handlers (handlers/README.md): Python modules importable by name (DATESYNC_HANDLER=weather:sync), SQL
# files for the `sql` handler (DATESYNC_SQL_FILE=/app/handlers/rollup.sql), and the packages they need in
# handlers/requirements.txt. Copied after the install above, so that editing a handler rebuilds only these layers.
COPY handlers ./handlers
RUN if [ -f handlers/requirements.txt ]; then pip install --no-compile -r handlers/requirements.txt; fi
ENV PYTHONPATH=/app/handlers

USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8000'), timeout=4)"]

# Render sends SIGTERM and waits 30 s: datesync stops intake, lets running dates finish for
# DATESYNC_SHUTDOWN_GRACE (20 s) or hands them back, and exits 0.
STOPSIGNAL SIGTERM
CMD ["datesync", "run"]

# One image for every role (web, inference worker, trainer, beat, migrate); docker-compose.yml picks the command.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PROJECT_ENVIRONMENT=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    FRACTURE_HOME=/data

# pg_dump and pg_restore for `fracture backup` / `fracture restore` against the compose file's PostgreSQL.
RUN apt-get update && apt-get install -y --no-install-recommends postgresql-client && rm -rf /var/lib/apt/lists/*
RUN pip install --no-cache-dir "uv>=0.5,<1"

WORKDIR /app

# Dependencies first, from the lock alone, so code edits do not reinstall torch.
COPY pyproject.toml uv.lock ./
RUN uv sync --frozen --no-dev --no-install-project && rm -rf /root/.cache

# The project itself, editable: fracture.migrate finds alembic.ini and migrations/ next to the package.
COPY . .
RUN uv sync --frozen --no-dev && rm -rf /root/.cache

# Run unprivileged; /data is the shared volume (database for the embedded mode, uploads, models).
RUN useradd --create-home --uid 1000 app && mkdir -p /data && chown app:app /data
USER app
VOLUME ["/data"]
EXPOSE 5000

CMD ["gunicorn", "--bind", "0.0.0.0:5000", "--workers", "2", "--threads", "4", "--timeout", "300", "--logger-class", "web.gunicorn_logs.Logger", "web.wsgi:app"]

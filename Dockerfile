# lmeval-trio: the same launch command as the README, as a non-root user.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PROJECT_ENVIRONMENT=/app/.venv

# tini reaps orphans and passes SIGTERM to hypercorn, which then shuts down gracefully.
RUN apt-get update && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/* \
    && pip install uv

WORKDIR /app
COPY pyproject.toml uv.lock README.md hypercorn.toml example.json ./
COPY lmeval_trio ./lmeval_trio
COPY examples/tasks ./examples/tasks
RUN uv sync --frozen --no-dev \
    && useradd --create-home --uid 10001 lmeval \
    && mkdir -p /data && chown lmeval /data

ENV PATH=/app/.venv/bin:$PATH \
    LMEVAL_DATA_DIR=/data
USER lmeval
VOLUME /data
EXPOSE 8080
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["hypercorn", "--config", "hypercorn.toml", "lmeval_trio.asgi:app"]

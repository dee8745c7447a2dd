# syntax=docker/dockerfile:1
# Multi-stage: build the virtualenv once, ship it with the source on a slim base as a non-root
# user. PyTorch is its own layer (it changes far less often than the app).
#   CPU image (default):  docker build -t checkpoint-registry .
#   CUDA image:           docker build --build-arg TORCH_INDEX=https://pypi.org/simple \
#                                      -t checkpoint-registry:cuda .
#   (PyPI's Linux torch wheels are the CUDA builds; pin another with --build-arg TORCH=...)
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ARG TORCH="torch==2.13.0"
ARG TORCH_INDEX="https://download.pytorch.org/whl/cpu"
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install --index-url "$TORCH_INDEX" "$TORCH"
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY migrations ./migrations
# Editable: the app finds its migrations beside its source (app/db/migrate.py), kept at /app.
# Bytecode compiled here: the runtime user cannot write beside the (root-owned) source.
RUN pip install -e . \
    && python -m compileall -q app migrations \
    && python -c "import app.main, torch, transformers"

FROM ${PYTHON_IMAGE} AS runtime
RUN useradd --create-home --uid 10001 --user-group ckpt \
    && mkdir -p /data \
    && chown ckpt:ckpt /data
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
WORKDIR /app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HOME=/data/cache/huggingface \
    CKPT_DATA_DIR=/data \
    CKPT_HOST=0.0.0.0 \
    CKPT_PORT=8000 \
    CKPT_LOG_FORMAT=json
USER ckpt
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-m", "app.observability.healthcheck"]
# One container on its own: migrate, then the API with its embedded worker. Compose runs the
# migration, the API and the worker as separate services instead. On 0.0.0.0 with CKPT_AUTH=auto
# (the default) the API starts only once an API key exists in the data volume:
#   docker run --rm -v ckpt-data:/data IMAGE \
#       sh -c "ckpt migrate && ckpt keys create --name admin --scope admin"
CMD ["sh", "-c", "ckpt migrate && exec ckpt serve"]

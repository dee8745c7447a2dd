# Multi-stage: build the virtualenv once, ship it with the source on a slim base as a non-root user.
# GPU images: docker build --build-arg TORCH="torch" (a CUDA build) ...
FROM python:3.11-slim AS build
ARG TORCH="torch==2.13.0"
WORKDIR /app
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY migrations ./migrations
RUN pip install --no-cache-dir "$TORCH" && pip install --no-cache-dir -e .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 ckpt && mkdir -p /data && chown ckpt /data
COPY --from=build /opt/venv /opt/venv
COPY --from=build --chown=ckpt /app /app
WORKDIR /app
ENV PATH=/opt/venv/bin:$PATH \
    CKPT_DATA_DIR=/data \
    CKPT_HOST=0.0.0.0 \
    CKPT_PORT=8000 \
    PYTHONUNBUFFERED=1
USER ckpt
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"
CMD ["sh", "-c", "ckpt migrate && ckpt serve"]

# syntax=docker/dockerfile:1
# The inference service: `docker build -t musicgen-train .` then
#   docker run --gpus all -p 8000:8000 -v musicgen-data:/data musicgen-train model=models:/NAME@ALIAS
# Stage 1 builds a wheel from pyproject.toml; stage 2 installs only that wheel and its
# dependencies, and runs as an unprivileged user.

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY musicgen_train ./musicgen_train
COPY configs ./configs
COPY recipes ./recipes
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim AS runtime
# Which PyTorch build to install: the default index gives CUDA wheels for GPU nodes;
# --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu makes a small CPU-only image.
ARG TORCH_INDEX=https://pypi.org/simple
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    MUSICGEN_TRAIN_HOME=/data \
    MUSICGEN_TRAIN_CACHE=/data/cache \
    HF_HOME=/data/huggingface \
    MUSICGEN_SERVE_HOST=0.0.0.0 \
    MUSICGEN_SERVE_PORT=8000
COPY --from=build /wheels /wheels
# With the clients of the backends replicas share: PostgreSQL (jobs) and Redis (rate limits).
RUN pip install --extra-index-url "${TORCH_INDEX}" "$(echo /wheels/*.whl)[postgres,redis]" \
    && rm -rf /wheels \
    && useradd --create-home --uid 10001 musicgen \
    && mkdir -p /data && chown musicgen:musicgen /data
USER 10001
WORKDIR /home/musicgen
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"
# `musicgen-train serve` composes the config (arguments are Hydra overrides) and runs uvicorn.
ENTRYPOINT ["musicgen-train", "serve"]
CMD ["model=tiny"]

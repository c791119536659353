# One image for every role of the bot; the role is the command (see compose.yaml and the Procfile):
#   docker run kb-bot serve      the chat front ends, /healthz, /readyz, /metrics on $PORT (the default)
#   docker run kb-bot worker     the training worker (build the GPU variant for it, below)
#   docker run kb-bot index      the release phase: the index up to date with knowledge/docs
# and any other CLI command (`ask`, `jobs`, `adapters promote V`, `purge`, ...).
#
# Torch is the only thing that differs between a CPU host and a GPU host, so the GPU variant is a build
# argument, not a second stage or a CUDA base image: torch's wheels on PyPI carry their own CUDA runtime
# (the nvidia-* wheels) and need only the driver, which the NVIDIA container toolkit mounts at run time.
#   docker build -t kb-bot .                                                   # CPU torch (~1 GB less)
#   docker build -t kb-bot:gpu --build-arg TORCH_INDEX=https://pypi.org/simple .   # CUDA torch, for `worker`
# `serve` with BOT_LLM_URL (vLLM) never imports torch, but the package depends on it, hence the small CPU wheel.
FROM python:3.11-slim-bookworm

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/home/bot/.cache/huggingface

# A non-root user. The folders that compose mounts volumes on are created here, owned by it, because a
# named volume mounted on an existing folder takes that folder's owner: the bot can then write to them.
RUN useradd --create-home --uid 10001 --user-group bot \
    && mkdir -p /app/data /adapters /home/bot/.cache/huggingface \
    && chown bot:bot /app/data /adapters /home/bot/.cache/huggingface

WORKDIR /app

# Torch first and alone: the largest layer, rebuilt only when the version or the variant changes.
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"

COPY pyproject.toml README.md ./
COPY bot ./bot
COPY models ./models
COPY knowledge ./knowledge
# Editable, so the package stays at /app/bot: the settings' relative defaults and the presets (models/)
# resolve against the checkout the package sits in, as in `make run`. The redis extra: the queue and the
# shared rate limits on Redis (BOT_REDIS_URL); the postgres extra: psycopg for BOT_DB=postgresql://.
RUN pip install --no-cache-dir -e '.[redis,postgres]'

# By number, so a runtime that cannot read /etc/passwd (and Kubernetes' runAsNonRoot) still sees non-root.
USER 10001:10001
EXPOSE 3000
# No HEALTHCHECK here: `worker` serves no HTTP. compose.yaml checks /healthz on the `serve` services.
ENTRYPOINT ["python", "-m", "bot"]
CMD ["serve"]

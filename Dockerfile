# syntax=docker/dockerfile:1
# Image for the search worker, the dashboard and the one-shot init jobs of docker-compose.yml.
#
#   docker build -t fast-mnist-search .
#   docker run --rm --gpus 1 -v mnist:/data/mnist fast-mnist-search \
#       python -m search.worker --spec studies/mnist_fast.toml --storage postgresql+psycopg://...
#
# torch/torchvision come from PyPI's default index. On Linux x86_64 those wheels are CUDA builds (the
# CUDA runtime arrives as nvidia-* pip wheels, several GB), so no CUDA base image is needed: the host
# needs only an NVIDIA driver and the NVIDIA Container Toolkit. Without a GPU the same image runs on
# CPU. For a much smaller CPU-only image:
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu -t fast-mnist-search .
# The versions default to the ones .ci/run tests with.
#
# BASE_IMAGE: any image whose `python` and `pip` work as in python:3.11-slim. Without a registry,
# tools/local_images.sh builds one locally (with torch and every dependency already installed, so
# the two pip steps below resolve offline) and docs/compose.md shows how to pass it.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
ARG TORCH_INDEX_URL=https://pypi.org/simple

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MNIST_DATA=/data/mnist \
    FAST_MNIST_CACHE=/data/mnist/tensors

# torch first, in its own layer: it is by far the largest and changes least often.
RUN pip install --index-url "${TORCH_INDEX_URL}" \
        "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"

# An unprivileged user. /data/mnist and /data/locks exist in the image and belong to it, so an empty
# named volume mounted there starts out with that ownership: the user can download MNIST into the
# one, and create the per-GPU and per-core lock files ($FAST_MNIST_LOCK_DIR) in the other.
RUN useradd --create-home --uid 10001 --user-group app \
    && mkdir -p /data/mnist/tensors /data/locks \
    && chown -R app:app /data

WORKDIR /app
# Only what the package build needs (see .dockerignore); README.md is pyproject's `readme`.
COPY pyproject.toml README.md ./
COPY objective/ objective/
COPY search/ search/
COPY studies/ studies/
RUN pip install . && rm -rf build ./*.egg-info

USER app

# MNIST is not baked in: torchvision downloads it into $MNIST_DATA on first use when there is internet,
# or mount a volume/folder that already holds MNIST/raw at /data/mnist. No VOLUME instruction: it would
# leave an anonymous volume behind on every `docker run`; compose mounts the named volume `mnist`.
CMD ["python", "-m", "search.worker", "--spec", "studies/mnist_fast.toml"]

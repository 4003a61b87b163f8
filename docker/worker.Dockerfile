# A GPU worker (`pacs-ai worker`): one container per GPU, models kept warm.
# Build from the repository root: docker build -f docker/worker.Dockerfile .
# Needs the NVIDIA Container Toolkit on the host to see the GPU.
# No "# syntax=" line: BuildKit would fetch a frontend image for it (air-gapped hosts).
# BASE_IMAGE: a mirrored CUDA runtime image; any Ubuntu 22.04 or Debian 12 image with
# python3.11 in its apt sources builds too (a CPU-only worker: docker/smoke-test --help).
ARG BASE_IMAGE=nvidia/cuda:12.6.3-runtime-ubuntu22.04
FROM ${BASE_IMAGE}

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Ubuntu 22.04 ships Python 3.11 in "universe" next to its default 3.10.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# torch first, from the PyTorch index matching the base image's CUDA (12.6); its own
# layer so that changing pacs-ai does not download it again.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126
RUN pip install --index-url "${TORCH_INDEX_URL}" torch

RUN groupadd --system --gid 10001 pacsai \
 && useradd --system --uid 10001 --gid pacsai --home-dir /var/lib/pacs-ai --no-create-home pacsai \
 && mkdir -p /var/lib/pacs-ai /etc/pacs-ai \
 && chown pacsai:pacsai /var/lib/pacs-ai

WORKDIR /opt/pacs-ai
COPY pyproject.toml README.md ./
COPY core ./core
COPY dicom_node ./dicom_node
COPY inference ./inference
COPY models ./models
COPY workers ./workers
COPY node_services ./node_services
COPY monitor ./monitor
COPY pacs_ai ./pacs_ai
# Extra "torch" adds scipy (postprocessing and the contour writer import it); torch
# itself is already installed above. A CPU-only worker leaves out tensorrt:
# --build-arg PACS_AI_EXTRAS=torch,onnx,codecs,postgres
ARG PACS_AI_EXTRAS=torch,tensorrt,onnx,codecs,postgres
RUN pip install ".[${PACS_AI_EXTRAS}]" && pacs-ai --help > /dev/null

COPY docker/config.yaml /etc/pacs-ai/config.yaml

USER pacsai
ENV PACS_AI_LOGGING__FORMAT=json
# Every pacs-ai command run in the container (docker compose exec ... pacs-ai resend ID)
# finds the configuration without --config.
ENV PACS_AI_CONFIG=/etc/pacs-ai/config.yaml
VOLUME ["/var/lib/pacs-ai"]
ENTRYPOINT ["pacs-ai"]
CMD ["worker", "--config", "/etc/pacs-ai/config.yaml"]

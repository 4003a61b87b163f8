# The DICOM node (`pacs-ai serve`): receives studies, routes them and queues jobs.
# No ML framework is installed: the listener never imports torch, TensorRT or onnxruntime.
# Build from the repository root: docker build -f docker/node.Dockerfile .
# No "# syntax=" line: BuildKit would fetch a frontend image for it, which an air-gapped
# host cannot. BASE_IMAGE: a mirrored or locally built Debian-based Python 3.11 image
# with python and pip on PATH (docker compose build --build-arg BASE_IMAGE=...).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The same fixed UID in the node and worker images, so that a data_dir on a host folder
# has one owner whichever image wrote it.
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
RUN pip install ".[postgres]" && pacs-ai --help > /dev/null

COPY docker/config.yaml /etc/pacs-ai/config.yaml

USER pacsai
ENV PACS_AI_LOGGING__FORMAT=json
# Every pacs-ai command run in the container (docker compose exec ... pacs-ai resend ID)
# finds the configuration without --config.
ENV PACS_AI_CONFIG=/etc/pacs-ai/config.yaml
VOLUME ["/var/lib/pacs-ai"]
EXPOSE 11112 8090
ENTRYPOINT ["pacs-ai"]
CMD ["serve", "--config", "/etc/pacs-ai/config.yaml"]

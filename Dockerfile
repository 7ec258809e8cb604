# syntax=docker/dockerfile:1
# KubeKVM images, from one build context:
#   docker build --target server -t ghcr.io/kubekvm/kubekvm:0.1.0 .
#   docker build --target agent  -t ghcr.io/kubekvm/kubekvm-agent:0.1.0 .
# The server is the last stage, so a plain `docker build .` builds it.
# Both run from a virtualenv built in the builder stage; neither contains a compiler, the
# build caches, the tests, the test-guest builder (kubekvm_demo, outside the build context) or
# the embedded development database (secantusdb): in Kubernetes the server always gets MONGODB_URI.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------------
# builder: one virtualenv per image, installed from the lock files (libvirt-python compiled
# against Debian's libvirt-dev).
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Debian's versions follow the pinned base image; pinning them here would only break the build
# at every point release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev libvirt-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY requirements/server.txt requirements/agent.txt ./requirements/
COPY src ./src
# Every dependency comes from the lock (`make lock`): pinned, its files' hashes checked, built
# here when there is no wheel (libvirt-python, against libvirt-dev). Then our own project,
# taking no dependency from anywhere but the lock. The lock names no development database.
# hadolint ignore=DL3013
RUN python -m venv --without-pip /opt/kubekvm \
    && pip --python /opt/kubekvm/bin/python install --require-hashes -r requirements/server.txt \
    && pip --python /opt/kubekvm/bin/python install --no-deps . \
    && python -m venv --without-pip /opt/kubekvm-agent \
    && pip --python /opt/kubekvm-agent/bin/python install --require-hashes -r requirements/agent.txt \
    && pip --python /opt/kubekvm-agent/bin/python install --no-deps ".[agent]" \
    && for venv in /opt/kubekvm /opt/kubekvm-agent; do \
        if "$venv/bin/python" -c "import secantus" 2>/dev/null; then \
            echo "secantusdb must not be in the images" >&2; exit 1; \
        fi; \
        "$venv/bin/python" -c "import kubekvm"; \
    done \
    && /opt/kubekvm-agent/bin/python -c "import agent, libvirt, gql"

# ---------------------------------------------------------------------------------------------
# agent: `kubekvm-agent` with the libvirt client library and qemu-img. In Kubernetes the
# DaemonSet runs it as root without capabilities, to reach the host's libvirtd socket.
FROM ${PYTHON_IMAGE} AS agent
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="KubeKVM host agent" \
      org.opencontainers.image.description="Runs KubeKVM's lab VMs on a KVM host through libvirt" \
      org.opencontainers.image.source="https://github.com/kubekvm/kubekvm" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
# tini: the agent runs qemu-img children; PID 1 must reap them and pass on SIGTERM.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libvirt0 qemu-utils tini \
    && rm -rf /var/lib/apt/lists/*
ENV PATH=/opt/kubekvm-agent/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN groupadd --system --gid 10001 kubekvm \
    && useradd --system --uid 10001 --gid kubekvm --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin kubekvm
COPY --from=builder /opt/kubekvm-agent /opt/kubekvm-agent
USER 10001:10001
EXPOSE 8081
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8081/healthz', timeout=4)"]
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["kubekvm-agent"]

# ---------------------------------------------------------------------------------------------
# server: `kubekvm serve` on port 8000, as user 10001, read-only root filesystem friendly.
FROM ${PYTHON_IMAGE} AS server
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="KubeKVM server" \
      org.opencontainers.image.description="Lab virtual machines for university courses" \
      org.opencontainers.image.source="https://github.com/kubekvm/kubekvm" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
ENV PATH=/opt/kubekvm/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    KUBEKVM_TEMPLATES_DIR=/app/templates \
    KUBEKVM_STATIC_DIR=/app/static
# qemu-img: the image store inspects and converts every image it imports (kubekvm.image_store).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends qemu-utils \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 kubekvm \
    && useradd --system --uid 10001 --gid kubekvm --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin kubekvm
COPY --from=builder /opt/kubekvm /opt/kubekvm
COPY templates /app/templates
COPY static /app/static
WORKDIR /app
USER 10001:10001
EXPOSE 8000
# Docker and Podman use this; Kubernetes ignores it and uses the Deployment's probes.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["kubekvm", "serve", "--host", "0.0.0.0", "--port", "8000"]

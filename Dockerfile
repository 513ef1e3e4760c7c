# kvstore: one node (`kvstore serve`) per container, configured by KVSTORE_* variables.
#
# Usual build (pulls the public Python image):
#   docker build -t kvstore .
# With no registry and no TLS inside the build (local base image + wheels prepared on the host):
#   bash deploy/build-base-image.sh && bash deploy/prepare-wheels.sh
#   docker build --build-arg BASE_IMAGE=kvstore-local/python:3.11-bookworm -t kvstore .
# When deploy/.cache/wheels holds wheels the build installs only from them (--no-index);
# otherwise it installs the source tree from PyPI.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
COPY . /src
RUN set -eu; \
    python3 -m venv /opt/kvstore; \
    if ls /src/deploy/.cache/wheels/kvstore-*.whl >/dev/null 2>&1; then \
      /opt/kvstore/bin/pip install --no-cache-dir --no-index \
        --find-links /src/deploy/.cache/wheels kvstore; \
    else \
      /opt/kvstore/bin/pip install --no-cache-dir /src; \
    fi; \
    /opt/kvstore/bin/pip uninstall -y -q pip setuptools 2>/dev/null || true; \
    find /opt/kvstore -name '__pycache__' -prune -exec rm -rf {} +; \
    /opt/kvstore/bin/python -c 'import kvstore, grpc, lmdb, uvloop, grpc_health.v1'

FROM ${BASE_IMAGE}
RUN set -eu; \
    (groupadd --system --gid 10001 kvstore && \
     useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/kvstore --no-create-home \
       --shell /usr/sbin/nologin kvstore); \
    mkdir -p /var/lib/kvstore; chown 10001:10001 /var/lib/kvstore; chmod 700 /var/lib/kvstore
COPY --from=build /opt/kvstore /opt/kvstore
COPY deploy/docker/healthcheck.py /opt/kvstore/healthcheck.py

ENV PATH=/opt/kvstore/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    KVSTORE_LISTEN=0.0.0.0:7001 \
    KVSTORE_DATA_DIR=/var/lib/kvstore \
    KVSTORE_METRICS_PORT=9100

USER 10001:10001
WORKDIR /var/lib/kvstore
VOLUME ["/var/lib/kvstore"]
# 7001: client and peer gRPC (with the grpc.health.v1 service); 9100: Prometheus metrics.
EXPOSE 7001 9100
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/opt/kvstore/bin/python", "/opt/kvstore/healthcheck.py"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["kvstore"]
CMD ["serve"]

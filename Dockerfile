# modelgate's serving image: Ray (with its HAProxy), ONNX Runtime and modelgate, all installed at
# build time; nothing is fetched when a container starts. Runs as a non-root user (uid 1000, as
# Ray's own images). Models come from the registry's `mlflow server` at deploy time
# (serve/control/distribute.py), so the image holds no model.
#
#   docker build -t modelgate:0.1.0 .
#   docker run --rm -p 8000:8000 -p 9000:9000 modelgate:0.1.0 modelgate --help
FROM python:3.11-slim-bookworm

# wget: KubeRay's default probes run `wget` in the Ray containers.
RUN apt-get update \
    && apt-get install -y --no-install-recommends wget \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 --shell /bin/bash ray

WORKDIR /opt/modelgate
COPY pyproject.toml README.md ./
COPY serve ./serve
COPY converters ./converters
COPY loadtests ./loadtests
COPY configs ./configs
# mlflow: the MLflow registry and its artifact proxy (what a cluster fetches artifacts from).
ARG EXTRAS=mlflow
RUN pip install --no-cache-dir ".[${EXTRAS}]" && python -m compileall -q serve converters

# What `modelgate ingress-env` prints, for containers that start Ray themselves (KubeRay sets
# them in the manifest as well: configs/kuberay/rayservice.yaml).
ENV RAY_SERVE_ENABLE_HA_PROXY=1 \
    RAY_SERVE_THROUGHPUT_OPTIMIZED=1 \
    RAY_SERVE_HAPROXY_RETRY_ON="conn-failure empty-response" \
    MODELGATE_INGRESS=lean \
    PYTHONUNBUFFERED=1

USER 1000
WORKDIR /home/ray
# HTTP, gRPC, the node exporter, Ray's dashboard, GCS, Ray's metrics.
EXPOSE 8000 9000 9464 8265 6379 8080

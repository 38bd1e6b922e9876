# cowsim serve in a container (deploy/README.md; deploy/compose.yaml builds it).
#
#     docker build -t cowsim .
#     docker run --rm -p 50051:50051 -p 9464:9464 -v cowsim-data:/data cowsim
#
# Arguments after the image name are more `cowsim serve` options (argparse keeps the
# last of a repeated one, so `--workers 4` overrides the CMD's).  tests/test_deploy_manifests.py
# parses ENTRYPOINT + CMD with cowsim's own parser and checks the ports against EXPOSE,
# compose and Prometheus.

# The base image is an argument so a mirror can stand in (--build-arg PYTHON_IMAGE=…);
# only `python3` with venv is used from it.
ARG PYTHON_IMAGE=python:3.11-slim

# --- build: a virtualenv with cowsim and its runtime dependencies (no dev extras) ---
FROM ${PYTHON_IMAGE} AS build
# Every dependency (numpy, grpcio, pydantic-core …) has manylinux wheels: no compiler needed.
RUN python3 -m venv /opt/cowsim
WORKDIR /src
# What setuptools needs (pyproject.toml reads README.md) and the four packages it maps
# (pyproject.toml [tool.setuptools.package-dir]); tests, docs and deploy stay out.
COPY pyproject.toml README.md ./
COPY sim/ sim/
COPY service/ service/
COPY clients/ clients/
COPY proto/ proto/
RUN /opt/cowsim/bin/pip install --no-cache-dir --disable-pip-version-check .

# --- runtime: the virtualenv only, run by an unprivileged user ---
FROM ${PYTHON_IMAGE}
# A fixed uid/gid: deploy/kubernetes/deployment.yaml's securityContext names the same
# numbers (runAsUser, fsGroup), which the test checks.
# (Not --system: that range ends at 999, and 10001 stays clear of any host's users.)
RUN groupadd --gid 10001 cowsim \
 && useradd --uid 10001 --gid cowsim --home-dir /data --no-create-home \
            --shell /usr/sbin/nologin cowsim \
 && mkdir /data && chown cowsim:cowsim /data
COPY --from=build /opt/cowsim /opt/cowsim
ENV PATH=/opt/cowsim/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /data
# The run store (runs.sqlite3, WAL): after the chown, so a new named volume starts owned
# by cowsim.  Keep it on a volume: the results are the state worth keeping.
VOLUME ["/data"]
# gRPC (cowsim.v1 + grpc.health.v1 + reflection), Prometheus metrics at /metrics
EXPOSE 50051 9464
# Health over the gRPC health service, which the image has (grpcio-health-checking is a
# runtime dependency); the client CLI has no health command.  It asks for the empty service
# name (the whole server), as Kubernetes' grpc probe does; SERVING only between start-up
# and SIGTERM (then NOT_SERVING while it drains).  Plaintext on 50051: with --tls-cert or
# another --port, override it (docker run --health-cmd …).
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python3", "-c", "import sys, grpc; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; r = g.HealthStub(grpc.insecure_channel('127.0.0.1:50051')).Check(h.HealthCheckRequest(service=''), timeout=4); sys.exit(r.status != h.HealthCheckResponse.SERVING)"]
# 0.0.0.0, not the default [::]: a container may have IPv6 off, and the metrics port
# listens on --host too.  SIGTERM (docker stop) drains: give `docker stop -t` more than
# --drain-seconds (compose's stop_grace_period does).  --worker-memory 1GiB, not the
# server's 4 GiB default: every example spec fits (the largest estimate is about 0.6 GiB)
# and two workers stay within a laptop.
ENTRYPOINT ["cowsim", "serve", "--host", "0.0.0.0", "--data-dir", "/data"]
CMD ["--port", "50051", "--metrics-port", "9464", "--workers", "2", "--worker-memory", "1GiB", "--drain-seconds", "30"]

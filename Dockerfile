# syntax=docker/dockerfile:1
# flow-auditor container image.
#
#   docker build -t flow-auditor:0.1.0 --build-arg VERSION=0.1.0 --build-arg REVISION="$(git rev-parse HEAD)" .
#   cilium hubble port-forward &      # Hubble Relay on 127.0.0.1:4245
#   docker run --rm --network host -v "$PWD/examples/airflow:/etc/flow-auditor/matrix:ro" \
#     -e FLOW_AUDITOR_SERVER=127.0.0.1:4245 \
#     -e FLOW_AUDITOR_MATRIX=/etc/flow-auditor/matrix/matrix.yaml flow-auditor:0.1.0
#
# Kubernetes manifests: deploy/ (see deploy/README.md).
#
# Two stages from the same pinned Python and Debian release: the builder compiles the judging core with
# mypyc (make native, scripts/build_native.py) and installs the project, compiled modules included, into a
# virtual environment in /opt/venv; the runtime stage copies only that environment. Every dependency ships
# binary wheels for CPython 3.11 (amd64 and arm64); only the compiled core needs a C compiler, so the
# builder uses the full image of the release (gcc and the C library headers included) and the runtime the
# slim one, which has no compiler.

# Both stages are pinned to a patch release (written out, not an ARG, so that hadolint checks the pin);
# bump both lines together.
FROM python:3.11.14-bookworm AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/venv \
    && python -m venv /opt/build
# Only what the wheel is built from (see .dockerignore): the package metadata, the README it names, the
# package itself (generated protobuf code included) and the script that compiles its core.
COPY pyproject.toml README.md ./
COPY auditor/ ./auditor/
COPY scripts/build_native.py ./scripts/
# /opt/build holds mypy (mypyc) and the type stubs it checks against (the project's "native" extra); the
# runtime stage never sees it. The compiled modules land beside their sources in auditor/ and go into the
# wheel; the build fails unless the installed auditor loads every one of them and they match the sources.
# The dependencies are pinned by the ranges in pyproject.toml; "." is the project itself, not a package
# from an index, so there is no version to pin here.
RUN /opt/build/bin/pip install --no-cache-dir ".[native]" \
    && /opt/build/bin/python scripts/build_native.py \
    && /opt/venv/bin/pip install --no-cache-dir . \
    && /opt/venv/bin/python -c "from auditor import native as n; assert n.compiled() == list(n.MODULES) and not n.stale(), n.describe()" \
    && /opt/venv/bin/flow-auditor --version

FROM python:3.11.14-slim-bookworm AS runtime
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="flow-auditor" \
      org.opencontainers.image.description="Runtime flow auditor for Cilium/Hubble: judges every connection against a declared communication matrix" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11.14-slim-bookworm"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv
COPY --from=builder /opt/venv /opt/venv
# Numeric, non-root user and group (the "nonroot" id of distroless images): Kubernetes can check
# runAsNonRoot against a numeric USER without looking into /etc/passwd.
USER 65532:65532
WORKDIR /tmp
# /metrics, /healthz and /readyz (--listen-address, default :9967).
EXPOSE 9967
ENTRYPOINT ["flow-auditor"]
# The daemon; --server and --matrix come from the command line or FLOW_AUDITOR_SERVER / FLOW_AUDITOR_MATRIX.
CMD ["run"]

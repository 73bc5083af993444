# syntax=docker/dockerfile:1
# One image for every Awareness service: `awareness serve <ingest|policy|scoring|signing|gdpr|analytics|gateway>`.
#
# The base is pinned by exact tag. Pin it by digest as well when you build for production, e.g.
#   docker build --build-arg PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:<digest> .
# (the digest was not stated here because it could not be pulled and checked where this file was written).
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
ARG NODE_IMAGE=node:20.20.2-bookworm-slim

# ---------------------------------------------------------------------------------------------------
# The portal's htmx and CSS come from the npm registry at build time (package-lock.json pins them);
# only the files scripts/vendor_assets.py names reach the image.
FROM ${NODE_IMAGE} AS assets
WORKDIR /assets
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund

# ---------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CONSTRAINT=/src/constraints.txt \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src

# /opt/tools holds the code generators (grpcio-tools, mypy-protobuf) and never reaches the final image;
# /opt/venv is the runtime environment the final stage copies.
RUN python -m venv /opt/tools && python -m venv /opt/venv

COPY constraints.txt pyproject.toml ./
RUN /opt/tools/bin/pip install --upgrade pip setuptools wheel \
 && /opt/tools/bin/pip install grpcio-tools mypy-protobuf \
 && /opt/venv/bin/pip install --upgrade pip setuptools wheel \
 && /opt/tools/bin/python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
 && /opt/venv/bin/pip install -c constraints.txt -r /tmp/requirements.txt

# Generated code is built here from protos/ (as `make protos` does), never copied from a work tree.
COPY protos ./protos
COPY scripts ./scripts
COPY clients/python ./clients/python
RUN PATH=/opt/tools/bin:$PATH /opt/tools/bin/python scripts/gen_protos.py \
 && /opt/venv/bin/pip install -c constraints.txt --no-deps ./clients/python

# Only the services: bench/ (benchmarks, load generator) and tests/ stay out of the image.
COPY services ./services
COPY --from=assets /assets/node_modules ./node_modules
RUN /opt/venv/bin/python scripts/vendor_assets.py \
 && /opt/venv/bin/pip install -c constraints.txt --no-deps . \
 && /opt/venv/bin/pip check

# ---------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="awareness" \
      org.opencontainers.image.description="Awareness services: ingest, policy, scoring, signing, gdpr, analytics, gateway" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    AWARENESS_HOST=0.0.0.0 \
    AWARENESS_DATA_DIR=/tmp/awareness \
    MPLCONFIGDIR=/tmp/matplotlib

# The weekly report's PDF (WeasyPrint) needs Pango, HarfBuzz and a font; `awareness backup` needs
# pg_dump, pg_restore and psql; nothing else is installed.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz-subset0 fonts-dejavu-core \
      postgresql-client \
 && rm -rf /var/lib/apt/lists/*

# Fixed uid/gid 10001: the Helm chart's runAsUser and fsGroup use the same numbers.
RUN groupadd --system --gid 10001 awareness \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin awareness

# Only the virtual environment: no sources, no generators, no compiler.
COPY --from=build /opt/venv /opt/venv

WORKDIR /app
USER 10001:10001

EXPOSE 8080 9090 50051 50052 50053 50054 50055 50056

ENTRYPOINT ["awareness"]
CMD ["serve", "gateway"]

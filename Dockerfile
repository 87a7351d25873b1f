# syntax=docker/dockerfile:1
# Debian's own python3 in both stages: the base can be rebuilt from the Debian archive alone
# (debootstrap), and the venv's interpreter path is the same in the build and runtime stages.
# The base is pinned to a Debian point release (13.8 is trixie); both stages name the same one.
FROM debian:13.8-slim AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/infisical-sync
ENV PATH=/opt/infisical-sync/bin:$PATH
WORKDIR /src
# Only behind a TLS-intercepting proxy: a CA bundle for pip, mounted into this stage at build
# time (buildah bud -v <dir>:/mnt:ro --build-arg PIP_CERT=/mnt/<bundle>). Never in the image.
ARG PIP_CERT
# The locked dependencies first, in their own layer: a source-only change does not reinstall
# them. Every file must match a hash in the lock (`make lock` writes it); wheels only, so nothing
# is built with unpinned build tools. The lock also pins the project's build backend.
COPY requirements.lock ./
RUN pip install --no-cache-dir --require-hashes --only-binary=:all: --no-deps -r requirements.lock
COPY pyproject.toml README.md ./
COPY operator ./operator
# The project alone, offline, with the backend installed above. No extras: the testing/dev tools
# never reach the image; nor do pip and the build backend. --no-deps everywhere: pip check
# fails the build when the lock misses a dependency of anything installed.
RUN pip install --no-cache-dir --no-deps --no-build-isolation --no-index . \
    && pip check \
    && pip uninstall --yes pip setuptools

# Runtime: python3 and CA certificates on the slim base; no build tools.
FROM debian:13.8-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH=/opt/infisical-sync/bin:$PATH
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 infisical-sync \
    && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin infisical-sync
COPY --from=build /opt/infisical-sync /opt/infisical-sync
USER 10001:10001
EXPOSE 8080 9090
# The subcommand lives in CMD so that the chart's `args: [run, ...]` replaces it whole.
ENTRYPOINT ["infisical-sync"]
CMD ["run", "--all-namespaces", "--log-format=json"]

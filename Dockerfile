# syntax=docker/dockerfile:1
# Debian's own python3 in both stages: the base can be rebuilt from the Debian archive alone
# (debootstrap), and the venv's interpreter path is the same in the build and runtime stages.
FROM debian:trixie-slim AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/infisical-sync
ENV PATH=/opt/infisical-sync/bin:$PATH
WORKDIR /src
# Only behind a TLS-intercepting proxy: a CA bundle for pip, mounted into this stage at build
# time (buildah bud -v <dir>:/mnt:ro --build-arg PIP_CERT=/mnt/<bundle>). Never in the image.
ARG PIP_CERT
# Runtime dependencies first, in their own layer: a source-only change does not reinstall them.
COPY pyproject.toml ./
RUN python3 -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"], sep="\n")' > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt
COPY README.md ./
COPY operator ./operator
# No extras: the testing/dev tools never reach the image; nor does pip itself.
RUN pip install --no-cache-dir . && pip uninstall --yes pip

# Runtime: python3 and CA certificates on the slim base; no build tools.
FROM debian:trixie-slim
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

# syntax=docker/dockerfile:1
# Build stage: a wheel and its dependencies; nothing from here but /install reaches the image.
FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN pip install --no-cache-dir --prefix=/install .

# Runtime: slim, non-root, read-only root filesystem friendly.
FROM python:3.12-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY --from=build /install /usr/local
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin operator
USER 10001:10001
EXPOSE 8080 9090
ENTRYPOINT ["infisical-sync", "run"]
CMD ["--all-namespaces", "--log-format=json"]

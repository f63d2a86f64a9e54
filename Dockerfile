# petstore server image.
#
#   docker build -t petstore .
#   docker run --rm -p 8000:8000 -e PETSTORE_JWT_SECRET=... petstore
#
# Two stages: the builder installs the package and its dependencies into a virtualenv; the
# final image copies only that virtualenv onto a fresh slim base, so no compiler, pip cache or
# source tree ends up in production. Every dependency ships binary wheels for this base, so
# the builder needs no apt packages either.

FROM python:3.11-slim AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH="/opt/venv/bin:${PATH}"

WORKDIR /src
# Metadata first, then the code: what the build reads is listed in .dockerignore's allow-list.
COPY pyproject.toml README.md LICENSE ./
COPY petstore ./petstore
COPY plugins ./plugins
# A regular (non-editable) install: the venv must not point back into /src. The postgres extra
# is production's database driver (asyncpg); the cli extra (rich) stays out.
RUN pip install --no-cache-dir "/src[postgres]" \
    && python -m compileall -q /opt/venv/lib


FROM python:3.11-slim AS runtime

LABEL org.opencontainers.image.title="petstore" \
      org.opencontainers.image.description="Real-time Swagger Petstore v3 server" \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed, unprivileged uid/gid, so volume ownership is predictable across rebuilds. Its home
# is the working directory: uploaded images (./media) and the default SQLite database
# (development only) land there. /app/media exists in the image so that a volume mounted on it
# starts out owned by that user.
RUN groupadd --system --gid 10001 petstore \
    && useradd --system --uid 10001 --gid petstore --home-dir /app --create-home \
       --shell /usr/sbin/nologin petstore \
    && install -d -o petstore -g petstore /app/media

COPY --from=builder /opt/venv /opt/venv

ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /app
# Numeric, so Kubernetes runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001

EXPOSE 8000

# The slim base has no curl: ask /healthz with the standard library. Assumes the default port
# of the CMD below; a container started with another --port needs its own healthcheck.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status != 200)"]

# Exec form: petstore is PID 1 and receives SIGTERM itself, so `docker stop` triggers uvicorn's
# graceful shutdown (WebSocket clients get 1012 and reconnect elsewhere) instead of a kill.
CMD ["petstore", "serve", "--host", "0.0.0.0", "--port", "8000"]

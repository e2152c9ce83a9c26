# healthcheck-exporter image: the wheels are built in the first stage and installed, offline, in
# a slim runtime stage that has no build tools. Usage and defaults: docs/observability.md.
#
#   docker build -t healthcheck-exporter .      (BuildKit: the default since Docker 23;
#                                                before it, set DOCKER_BUILDKIT=1)
#   docker run --rm -p 9898:9898 -e HEALTHCHECK_TARGETS='web=10.0.0.5:8080/healthz' healthcheck-exporter

# No `# syntax=` line: it would pull a frontend image, and the built-in one (BuildKit) already
# understands `RUN --mount`, so the image builds where no registry is reachable. PYTHON_IMAGE
# names another base built the same way (the tests use an offline stand-in).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
# Only what the wheel is made of (.dockerignore keeps the rest out of the context).
COPY pyproject.toml README.md ./
COPY exporter/ exporter/
# The project's wheel plus every dependency's, uvloop included (the `fast` extra).
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[fast]"

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="healthcheck-exporter" \
      org.opencontainers.image.description="Active HTTP health checker with HAProxy-style fall/rise thresholds and Prometheus metrics" \
      org.opencontainers.image.licenses="MIT"
# Every wheel built above (the project, its dependencies, uvloop) and nothing else (--no-index);
# bind-mounted from the build stage, so no layer keeps a copy of them.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    PIP_ROOT_USER_ACTION=ignore pip install --no-cache-dir --no-index --find-links=/wheels \
        /wheels/*.whl \
    && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin \
        healthcheck \
    && install -d -o 10001 -g 10001 /var/lib/healthcheck-exporter
# Listen on every interface (IPv4 and IPv6) inside the container; log JSON lines for log
# collectors. Any HEALTHCHECK_* variable given to `docker run -e` overrides these.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HEALTHCHECK_LISTEN_ADDRESS=:9898 \
    HEALTHCHECK_LOG_FORMAT=json
# A numeric user, so Kubernetes' runAsNonRoot can verify it. It owns /var/lib/healthcheck-exporter:
# a volume mounted there starts owned by it, a place to write the HAProxy config file.
USER 10001:10001
EXPOSE 9898
# /-/healthy with the image's own Python (no curl here), on the port of HEALTHCHECK_LISTEN_ADDRESS;
# over HTTPS (certificate not verified: it is our own) when a web config turns TLS on.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import http.client, os, ssl\nport = int(os.environ.get('HEALTHCHECK_LISTEN_ADDRESS', ':9898').rpartition(':')[2])\ndef status(conn):\n    conn.request('GET', '/-/healthy')\n    return conn.getresponse().status\ntry:  # a web config may turn TLS on; /-/healthy needs no credentials or client certificate\n    tls = ssl._create_unverified_context()\n    code = status(http.client.HTTPSConnection('127.0.0.1', port, timeout=4, context=tls)) if os.environ.get('HEALTHCHECK_WEB_CONFIG_FILE') else 0\nexcept ssl.SSLError:\n    code = 0\nraise SystemExit((code or status(http.client.HTTPConnection('127.0.0.1', port, timeout=4))) != 200)\n"]
ENTRYPOINT ["healthcheck-exporter"]
CMD ["run"]

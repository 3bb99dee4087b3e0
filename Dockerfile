# mtt-router as a container image: the daemon as a non-root user, its state in a volume, the
# config mounted at /etc/mtt-router/config.yaml (compose.yaml: deploy/docker/config.yaml).
#   docker build -t mtt-router .
#   docker run -v "$PWD/config.yaml:/etc/mtt-router/config.yaml:ro" -e MTT_CLIENT_SECRET=... \
#     -p 8080:8080 mtt-router
# Signals as with systemd: SIGTERM drains and exits 0 (give it 15 s: --stop-timeout 15 / compose
# stop_grace_period), SIGHUP reloads (docker kill -s HUP).

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md requirements.lock ./
COPY router/ router/
# Installed exactly as the README's "Install" says (tests/test_deploy_container.py compares them).
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/mtt-router/venv \
    && /opt/mtt-router/venv/bin/pip install -c requirements.lock .

FROM python:3.11-slim
ENV PATH=/opt/mtt-router/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/mtt-router --no-create-home \
        --shell /usr/sbin/nologin mtt-router \
    && install -d -o mtt-router -g mtt-router -m 0700 /var/lib/mtt-router
COPY --from=build /opt/mtt-router/venv /opt/mtt-router/venv
USER 10001:10001
# tokens_file (memory storage) and log.capture go here; keep it across containers.
WORKDIR /var/lib/mtt-router
VOLUME ["/var/lib/mtt-router"]
# server.listen (public: MTT's notifications, behind TLS) and server.admin_listen (metrics).
EXPOSE 8080 9100
# /healthz of the admin listener (no token needed); set MTT_ROUTER_HEALTHZ when
# server.admin_listen is not on port 9100. With server.workers > 1 the supervisor answers there
# for all its workers (and, as PID 1, reaps whatever is left to it); their admin ports follow.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ.get('MTT_ROUTER_HEALTHZ', 'http://127.0.0.1:9100/healthz'), timeout=4)"]
ENTRYPOINT ["mtt-router"]
CMD ["run", "--config", "/etc/mtt-router/config.yaml"]

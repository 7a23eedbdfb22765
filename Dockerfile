# txgateway container image: slim, non-root, read-only root filesystem friendly.
#   docker build -t txgateway .
#   docker run --read-only -p 8080:8080 -v $PWD/gw.yaml:/etc/txgateway/gw.yaml:ro txgateway
# Without a mounted config it forwards to http://app:8000 (deploy/container-gw.yaml).
FROM python:3.11-slim AS build
WORKDIR /src
COPY setup.cfg pyproject.toml README.md ./
COPY src ./src
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin txgateway
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
    # Build twistd's plugin cache now: at run time the filesystem is read-only.
    && python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"
# A default config that needs no other file (tests/test_deploy.py replays these COPY lines and checks it).
COPY deploy/container-gw.yaml /etc/txgateway/gw.yaml
USER 10001
EXPOSE 8080 8090
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/ready', timeout=2)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["twistd", "-n", "--pidfile=", "--logfile=-", "txgateway"]
CMD ["--config", "/etc/txgateway/gw.yaml"]

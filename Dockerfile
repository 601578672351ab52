# mosaic-relay server image (Debian slim, non-root, health-checked).
#
# NOT BUILT HERE: the development machines have no Docker daemon and no access to a container
# registry, so this file has never been built or run. tests/test_packaging.py parses it and checks
# that every path it COPYs exists; `pip install .` itself is tested there from a fresh copy of the
# repository. Build and run (docs/OPERATIONS.md):
#
#   docker build -t mosaic-relay .
#   docker run --network host mosaic-relay            # = mosaic-relay serve, port 8080
#
# WebRTC media use UDP ports the OS picks, so run with --network host, or put a TURN server in front
# (--ice-server / --turn-secret) and publish only TCP 8080. Settings: flags after `serve`,
# MOSAIC_RELAY_* environment variables, or a TOML file mounted and passed with --config.
# The health check speaks plain HTTP: with --ssl-cert, terminate TLS in a proxy instead, or
# override HEALTHCHECK.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# dependencies first: this layer survives code changes
COPY requirements.txt ./
RUN pip install -r requirements.txt
COPY pyproject.toml README.md run_server.py ./
COPY relay/ relay/
COPY signaling/ signaling/
COPY mosaic_relay/ mosaic_relay/
COPY static/ static/
COPY weights/detector.onnx weights/MODEL_CARD.md weights/
RUN pip install --no-deps . && cd / && rm -rf /src

RUN useradd --system --create-home --uid 10001 --shell /usr/sbin/nologin mosaic
USER mosaic
WORKDIR /home/mosaic

# the port comes from the environment so that the health check follows it (-e MOSAIC_RELAY_PORT=…)
ENV MOSAIC_RELAY_PORT=8080
EXPOSE 8080/tcp
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('MOSAIC_RELAY_PORT', '8080'), timeout=4)"

ENTRYPOINT ["mosaic-relay"]
CMD ["serve"]

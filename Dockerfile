# sipserver in a container: non-root, config and certificates as volumes, JSON logs on stdout.
#   podman build --format docker -t sipserver .
#   podman run -d --init --network host -v ./conf:/etc/sipserver -v sipcerts:/var/lib/sipserver/certs sipserver
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    SIPSERVER_STATE_DIR=/var/lib/sipserver PATH=/opt/sipserver/bin:$PATH \
    SIP_PORT=5060 TLS_PORT=5061

COPY pyproject.toml setup.py README.md /src/
COPY sipserver /src/sipserver
RUN python3 -m venv /opt/sipserver \
 && /opt/sipserver/bin/pip install --no-cache-dir /src \
 && rm -rf /src \
 && groupadd --system sipserver \
 && useradd --system --gid sipserver --home-dir /var/lib/sipserver --shell /usr/sbin/nologin sipserver \
 && mkdir -p /etc/sipserver /var/lib/sipserver/certs/server /var/lib/sipserver/certs/trust \
 && chown -R sipserver:sipserver /var/lib/sipserver

COPY contrib/container/sipserver.toml /etc/sipserver/sipserver.toml

VOLUME ["/etc/sipserver", "/var/lib/sipserver/certs"]
EXPOSE 5060/udp 5060/tcp 5061/tcp
USER sipserver

# Our own Test-UMConnectivity: an OPTIONS ping answered 2xx by this server.
HEALTHCHECK --interval=30s --timeout=10s --start-period=10s --retries=3 \
  CMD sipserver ping "sip:127.0.0.1:${SIP_PORT}" --timeout 5 || exit 1

# Ports come from the environment so that health check and server agree.
CMD ["sh", "-c", "exec sipserver run --config /etc/sipserver/sipserver.toml --log-format json --sip-port \"$SIP_PORT\" --tls-port \"$TLS_PORT\""]

"""The ingress in front of the routers: Ray's HAProxy, made private to its owner (haproxy), and the
TLS terminator (tls)."""

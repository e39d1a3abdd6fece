"""Transports between a router and a dedicated version's replicas: the direct transport (direct),
beside Ray's own handles."""

"""`serve.grpc_service.add_servicer`, the gRPC servicer function users' configs name in
`grpc_options.grpc_servicer_functions`. It lives in serve/protocol/grpc_codec.py; this name stays so
that every config written for modelgate keeps working."""

from serve.protocol.grpc_codec import add_servicer

__all__ = ["add_servicer"]

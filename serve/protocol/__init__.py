"""Protocol adapters: the Open Inference Protocol over HTTP (rest, rest_codec, openapi) and gRPC
(grpc_codec), each turning the wire's messages into the data plane's calls and its errors into the
protocol's own form."""

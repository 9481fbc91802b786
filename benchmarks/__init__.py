"""Benchmarks of wove_h2grpc against grpc.aio and grpclib (``python -m benchmarks``)."""

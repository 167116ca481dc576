"""The gRPC services of the core, one module each; `rpc.service_handler` wires them."""

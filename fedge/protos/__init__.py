"""Generated protobuf and gRPC code (see ``protos/``); do not edit."""

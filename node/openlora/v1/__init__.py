"""Generated gRPC stubs for protos/openlora/v1 (scripts/gen_protos.py); do not edit."""

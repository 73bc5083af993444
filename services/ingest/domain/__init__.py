"""Pure domain logic of the ingest service: no I/O, no gRPC, no database."""

"""Pure domain logic of the gdpr service: keys, retention, export, consent and audit (no I/O, no gRPC)."""

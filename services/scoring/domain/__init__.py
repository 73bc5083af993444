"""Pure ML domain of the scoring service: features, synthetic data, training, ONNX scoring.

No I/O to other services and no transport here; the registry and gRPC layers build on it.
"""

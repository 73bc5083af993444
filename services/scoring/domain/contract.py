"""The ONNX interface shared by training (export) and serving (load), kept free of heavy imports."""

from __future__ import annotations

from typing import Final

INPUT_NAME: Final = "features"
PROBABILITY_OUTPUT_NAME: Final = "probabilities"
# Opset 21 is the newest that skl2onnx 1.20 is tested against, and onnxruntime >= 1.17 runs it.
TARGET_OPSET: Final = 21
# ONNX metadata_props written at export and checked at load, so a model never meets the wrong features.
METADATA_FEATURE_SCHEMA: Final = "awareness.feature_schema_version"
METADATA_FEATURE_NAMES: Final = "awareness.feature_names"

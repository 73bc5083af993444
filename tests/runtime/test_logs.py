from __future__ import annotations

import io
import json
import logging

from opentelemetry.sdk.trace import TracerProvider

from services.runtime.logs import JsonFormatter


def test_log_line_carries_trace_id_of_its_span() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter(service="ingest"))
    logger = logging.getLogger("test.trace")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    tracer = TracerProvider().get_tracer("test")
    try:
        with tracer.start_as_current_span("append") as span:
            logger.info("appended", extra={"event_id": "e1"})
            expected = span.get_span_context()
        logger.info("outside any span")
    finally:
        logger.removeHandler(handler)
    inside, outside = (json.loads(line) for line in stream.getvalue().splitlines())
    assert inside["trace_id"] == format(expected.trace_id, "032x")
    assert inside["span_id"] == format(expected.span_id, "016x")
    assert inside["service"] == "ingest" and inside["event_id"] == "e1" and inside["message"] == "appended"
    assert "trace_id" not in outside

"""Benchmarks and the load generator: ``python -m bench NAME`` (``make bench*``).

Kept apart from ``services`` so that neither the ``awareness`` wheel nor the image ships them;
they import the services, never the other way round. Run from the repository root.
"""

"""Request traces: the canonical JSONL format, generators, importers and the nexus-trace CLI."""
from traces.format import TraceEntry, read_trace, write_trace

__all__ = ["TraceEntry", "read_trace", "write_trace"]

"""`belle export`: belle models in other runtimes' formats; GGUF for llama.cpp (`belle export gguf`)."""

from belle.export.gguf import GGUF_TYPES, ExportReport, export_gguf

__all__ = ["GGUF_TYPES", "ExportReport", "export_gguf"]

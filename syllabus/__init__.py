"""Syllabus shared library: config, artifact store, metadata, models, task specs.

Services and the orchestrator depend on this package; it depends on none of them.
Heavy imports (torch, transformers) live only in `syllabus.models` and are imported lazily.
"""

__version__ = "0.1.0"

"""Chat-ops knowledge-base assistant for startup teams.

Importing the package does no work and imports no heavy library (torch,
transformers, chat SDKs): those load lazily where they are used, so the CLI
starts fast and CPU tests stay light.
"""

__version__ = "0.1.0"

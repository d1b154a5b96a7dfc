"""Shared kernel of the HEp-2 IIF service: settings, object storage, pattern vocabulary and the CLI."""

__version__ = "0.1.0"

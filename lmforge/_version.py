"""The package version: one definition, read by `lmforge.__version__`, the files lmforge writes and pyproject."""

__version__ = "0.1.0"

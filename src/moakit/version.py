"""The package version, in a module of its own so that adapters (the ``User-Agent`` header) and
the CLI can name it without importing the package root and everything it re-exports."""

__version__ = "0.1.0"

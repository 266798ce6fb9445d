"""The package version (a leaf module: what records the version imports it from here)."""

__version__ = "0.1.0"

"""The package version, stamped into every result and cache key."""

__version__ = "0.1.0"

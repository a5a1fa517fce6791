"""Backsync: server-side background sync for mobile apps."""

__version__ = "0.1.0"

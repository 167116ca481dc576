"""Runnable examples for extension authors (see docs/EXTENSIONS.md)."""

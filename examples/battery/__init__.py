"""Example extension: a home battery reached over a small TCP line protocol.

`simulator.py` plays the battery; `__main__.py` is the extension, built on the SDK. The guide in
docs/EXTENSIONS.md walks through both.
"""

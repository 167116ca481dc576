"""The site's web GUI (untrusted agent, read-only): an overview of the site and every point,
live over a WebSocket, with a 24 h chart per point. docs/GUI.md.

Run by the supervisor as `python -m untrusted.gui` (site.toml `[agents.gui]`).
"""

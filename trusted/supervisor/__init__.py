"""The site supervisor (`smx run`): one site file, provisioning, every part of the site its own
process, restarts with back-off, and `smx status` (docs/SITE.md).

Import `Supervisor` from trusted.supervisor.runner: this package stays light, because its
isolation module runs as a small program before every isolated child (no gRPC loaded there).
"""

"""The site supervisor (`smx run`): one site file, provisioning, every part of the site its own
process, restarts with back-off, and `smx status` (docs/SITE.md)."""

from trusted.supervisor.runner import Supervisor, SupervisorError

__all__ = ["Supervisor", "SupervisorError"]

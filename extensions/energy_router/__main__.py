"""`python -m extensions.energy_router`: started by `smx run` with the SMX_* environment."""

from __future__ import annotations

from extensions.sdk import main_of

from . import setup

if __name__ == "__main__":
    main_of(setup)

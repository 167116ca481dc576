"""`python -m untrusted.lessag`: the agent, configured from site.toml by the supervisor."""

from .agent import Lessag


def _nothing_more(agent: Lessag) -> None:
    """The agent wires itself from its config."""


if __name__ == "__main__":
    Lessag.main_of(_nothing_more)

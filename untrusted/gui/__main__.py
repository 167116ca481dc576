"""`python -m untrusted.gui`: the GUI agent, configured from site.toml by the supervisor;
`python -m untrusted.gui hash-password`: the `password_hash` for its config."""

import sys

if __name__ == "__main__":
    if sys.argv[1:2] == ["hash-password"]:
        from .password_command import main

        raise SystemExit(main())
    from smx.sdk import Agent

    from .agent import setup

    Agent.main_of(setup)

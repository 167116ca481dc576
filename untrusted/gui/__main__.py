"""`python -m untrusted.gui`: the GUI agent, configured from site.toml by the supervisor;
`python -m untrusted.gui hash-password`: the `password_hash` for its config."""

import sys

if __name__ == "__main__":
    if sys.argv[1:2] == ["hash-password"]:
        from .password_command import main

        raise SystemExit(main())
    if sys.argv[1:2] in (["-h"], ["--help"]):
        print(__doc__)
        print("docs/GUI.md: what it shows, its site.toml entry and how to secure it")
        raise SystemExit(0)
    from smx.sdk import Agent

    from .agent import setup

    Agent.main_of(setup)

"""The client half of the `smx` command: sub-commands that only talk to a running core through
the API (points, setpoints, identity, admin). The trusted half (pki, policy, core, run, demo,
audit files) lives in `trusted/cli`."""

"""The `smx` command: one module per command group, each exposing `register(subparsers)`."""

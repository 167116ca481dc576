"""Generated from proto/smx/v1 by scripts/gen_stubs.py: do not edit."""

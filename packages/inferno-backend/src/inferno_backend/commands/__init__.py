"""Subcommands of the `inferno` CLI."""

"""Kinds of checks and what configures them (issue 12): one module per concern."""

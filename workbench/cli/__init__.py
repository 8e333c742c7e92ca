"""The `workbench` command line: commands over ``workbench.client.Lab``."""

from workbench.cli.main import main

__all__ = ["main"]

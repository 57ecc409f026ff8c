"""`python -m embedpipe` = the `embedpipe` command."""

from embedpipe.cli.app import main

main()

"""``python -m taskrun``."""

from taskrun.cli import main

main(prog_name="taskrun")

"""python -m droplet_core: see cli.py."""

from .cli import run

run()

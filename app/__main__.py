"""``python -m app`` is the ``rollout`` command."""

from app.cli import main

main()

"""``python -m statecraft`` runs the CLI, like the ``statecraft`` console script."""

from statecraft.cli import main

main()

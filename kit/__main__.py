"""``python -m kit`` (also what ``torchrun -m kit fold-train ...`` runs)."""

from kit.cli import main

main()

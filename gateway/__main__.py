"""``python -m gateway`` runs the carebridge command line."""

from gateway.cli import main

main()

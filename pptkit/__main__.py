"""`python -m pptkit` (and `torchrun -m pptkit ...`) run the CLI."""

from pptkit.cli import main

main()

"""`python -m duotone_operator` runs the operator."""

from duotone_operator.cli import main

main()

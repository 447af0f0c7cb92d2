"""`python -m edgeft` = the `edgeft` command (used by torchrun: `torchrun -m edgeft compress ...`)."""
from edgeft.cli import main

main()

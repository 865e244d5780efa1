"""`python -m cc_train` is `cc-train`."""

from cc_train.cli import main

main()

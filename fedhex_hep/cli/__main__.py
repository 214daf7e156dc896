"""``python -m fedhex_hep.cli``: the same as the ``fedhex-hep`` command."""

from fedhex_hep.cli.app import main

main()

"""``python -m mqkit.cli``: the same as the ``mqkit`` script."""

from mqkit.cli import main

main()

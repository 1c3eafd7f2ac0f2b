"""``python -m guardian`` is the ``guardian`` command."""

from guardian.cli import main

main()

"""C{python -m picluster.cli}: the C{picluster} command."""

from picluster.cli.main import run

run()

"""Entry point for clusters: ``ray submit cluster/<file>.yaml search.py --config tune_configs/<name>.yaml``.

Same arguments as ``ajpq search``; on a cluster set ``ray_address: auto`` (or ``--set ray_address=auto``)
and an MLflow tracking server with ``--tracking-uri``.
"""

import sys

from ajpq.cli import main

if __name__ == "__main__":
    sys.exit(main(["search", *sys.argv[1:]]))

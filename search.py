"""Entry point for clusters: ``ray submit cluster/<file>.yaml search.py --config tune_configs/<name>.yaml``.

Same arguments as ``ajpq search``. ``ray submit`` copies this file to the head's home folder and
runs it there, so a relative ``--config`` path that does not exist in the working directory is
looked up in the installed project (the cluster files put it at ``~/ajpq``). On a cluster set
``--set ray_address=auto``; the cluster files point ``MLFLOW_TRACKING_URI`` at the head's MLflow
server, so records go there by default.
"""

import sys

from ajpq.cli import main

if __name__ == "__main__":
    sys.exit(main(["search", *sys.argv[1:]]))

"""The fedft ServerApp for ``flwr run .``: reads ``config-file`` (relative to the app directory),
``out`` and any dotted overrides from the Flower run config, then runs the experiment.

``fedft run`` builds its own ServerApp around an already parsed config instead.
"""

from pathlib import Path

from fedft.federated.apps import make_server_app

app = make_server_app(base_dir=Path(__file__).resolve().parent.parent)

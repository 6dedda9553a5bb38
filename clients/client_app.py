"""The fedft ClientApp (``flwr run .`` and deployment): one client round per train message.

All logic lives in :mod:`fedft.federated`; this module only exposes the app object.
"""

from fedft.federated.apps import make_client_app

app = make_client_app()

"""Probe the body service across hosts: who gets in (right token + CA) and who is refused.

    python body_probe.py serve HOST CERT_DIR TOKEN      # prints "PORT <n>", serves until SIGTERM
    python body_probe.py call HOST:PORT TOKEN CA_FILE [TOKEN CA_FILE ...]
        # one line per (token, CA) pair: OK, or the gRPC status of the failed call; CA "-" = no TLS

``serve`` runs a frozen identity body with TLS from ``fedft deploy certs`` (``server.pem``).
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import torch

from fedft.accounting import CommLedger
from fedft.body.client import BodyServiceError, GrpcTransport
from fedft.body.service import start_body_service
from fedft.deploy_config import SERVER_CERT, SERVER_KEY


class Identity(torch.nn.Module):
    def forward(self, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return h


def serve(host: str, cert_dir: str, token: str) -> None:
    d = Path(cert_dir)
    tls = ((d / SERVER_CERT).read_bytes(), (d / SERVER_KEY).read_bytes())
    with start_body_service(Identity(), token=token, mode="frozen", host=host, tls=tls) as svc:
        print(f"PORT {svc.port}", flush=True)
        signal.pause()


def call(address: str, *pairs: str) -> None:
    for token, ca in zip(pairs[::2], pairs[1::2], strict=True):
        call_one(address, token, ca)


def call_one(address: str, token: str, ca: str) -> None:
    roots = None if ca == "-" else Path(ca).read_bytes()
    tr = GrpcTransport(address, token, CommLedger(), T=2, D=4, max_batch=2, root_certificates=roots, timeout_s=10)
    try:
        tr.open()
        tr.forward(torch.ones(1, 2, 4), None)
        print("OK", flush=True)
    except BodyServiceError as e:
        print(e.code.name, flush=True)
    finally:
        try:
            tr.close()
        except BodyServiceError:
            pass


if __name__ == "__main__":
    {"serve": serve, "call": call}[sys.argv[1]](*sys.argv[2:])

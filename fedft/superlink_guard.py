"""``flower-superlink`` with its Control API answering this host only (``fedft deploy superlink``).

In Flower 1.41 the SuperLink serves the Control API (``flwr run``, ``flwr supernode register``,
``flwr stop`` ...: HTTP paths under ``/v1/control``) on the same ``--host``/``--port`` as the Fleet
API that SuperNodes on other hosts must reach; its ``--control-api-address`` flag is deprecated and
only moves a legacy gRPC server that is off by default. Without Flower's account authentication any
host that reaches the port may use the Control API, for example to register its own SuperNode key.

``python -m fedft.superlink_guard [flower-superlink arguments]`` runs the same SuperLink with one
ASGI middleware in front: a Control API request from another host is refused with HTTP 403 and a
one-line reason; requests from a loopback address, or from the address the connection arrived at
(this host dialling its own IP), pass. Fleet and Runtime requests are untouched. If the legacy gRPC
Control API is switched on (``FLWR_INTERNAL_GRPC_CONTROL_API=1``), it is bound to 127.0.0.1:9093
unless ``--control-api-address`` is given.
"""

from __future__ import annotations

import ipaddress
import json
import os
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

CONTROL_PREFIX = "/v1/control"  # Flower's Control API router (flwr.superlink.routers.control)
LEGACY_CONTROL_ADDRESS = "127.0.0.1:9093"  # [D] Flower's default port, loopback instead of 0.0.0.0
REFUSED = ("the SuperLink Control API answers only on the SuperLink's host (fedft deploy superlink); "
           "run flwr there, or start it with --expose-control-api behind a firewall")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def is_local(scope: Scope) -> bool:
    """True when the request comes from this host: a loopback peer, or the peer address equals the
    address the connection arrived at."""
    client, server = scope.get("client"), scope.get("server")
    if not client:
        return False  # unknown peer (no socket): refuse
    host = str(client[0])
    try:
        if ipaddress.ip_address(host.split("%")[0]).is_loopback:
            return True
    except ValueError:
        return False
    return bool(server) and host == str(server[0])


class ControlGuard:
    """ASGI middleware: 403 for Control API requests (:data:`CONTROL_PREFIX`) from other hosts."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = str(scope.get("path", ""))
        if scope.get("type") in ("http", "websocket") and path.startswith(CONTROL_PREFIX) and not is_local(scope):
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            body = json.dumps({"detail": REFUSED}).encode()
            await send({"type": "http.response.start", "status": 403,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)


def install() -> None:
    """Make Flower's SuperLink app factory add :class:`ControlGuard` (outermost middleware)."""
    import flwr.superlink.main as link_main

    create = getattr(link_main, "create_app", None)
    if create is None or getattr(create, "fedft_guarded", False):
        if create is None:
            raise RuntimeError("this Flower version has no flwr.superlink.main.create_app")
        return

    def create_app(*args: Any, **kwargs: Any) -> Any:
        app = create(*args, **kwargs)
        app.add_middleware(ControlGuard)
        return app

    create_app.fedft_guarded = True  # type: ignore[attr-defined]
    link_main.create_app = create_app


def main(argv: list[str] | None = None) -> None:
    """Run ``flower-superlink`` with ``argv`` behind :class:`ControlGuard`."""
    args = list(sys.argv[1:] if argv is None else argv)
    if os.environ.get("FLWR_INTERNAL_GRPC_CONTROL_API") == "1" and not any(
            a.startswith("--control-api-address") for a in args):
        args += ["--control-api-address", LEGACY_CONTROL_ADDRESS]
    try:
        install()
        from flwr.superlink.cli import flower_superlink
    except (ImportError, RuntimeError) as e:
        sys.exit(f"fedft deploy superlink: cannot guard the Control API of this Flower version ({e}); "
                 f"use --expose-control-api and restrict the port with a firewall")
    sys.argv = ["flower-superlink", *args]
    flower_superlink()


if __name__ == "__main__":
    main()

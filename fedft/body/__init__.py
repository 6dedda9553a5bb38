"""The body protocol of a U-split: how a client's head and tail reach the server-side body.
Wire codec (``codec``), session spec and request checks (``spec``), in-process and gRPC transports
(``transport``, ``client``), wire formats and error feedback (``wire``, ``quant``), and the gRPC body service with its sessions (``service``, ``state``)."""

from fedft.body.client import BodyServiceError, GrpcTransport, method_path
from fedft.body.codec import WIRE_DTYPES, CodecError, WireDtype, WireFormat, wire_format
from fedft.body.service import BodyService, BodyServiceHandle, new_token, start_body_service
from fedft.body.spec import ServiceError, SessionSpec, check_forward, check_grad, check_wire_dtype
from fedft.body.state import BodyMode, BodyState
from fedft.body.transport import BodySession, LoopbackTransport, Transport
from fedft.body.wire import ErrorFeedback, Wire

__all__ = [
    "WIRE_DTYPES",
    "BodyMode",
    "BodyService",
    "BodyServiceError",
    "BodyServiceHandle",
    "BodySession",
    "BodyState",
    "CodecError",
    "ErrorFeedback",
    "GrpcTransport",
    "LoopbackTransport",
    "ServiceError",
    "SessionSpec",
    "Transport",
    "Wire",
    "WireDtype",
    "WireFormat",
    "check_forward",
    "check_grad",
    "check_wire_dtype",
    "method_path",
    "new_token",
    "start_body_service",
    "wire_format",
]

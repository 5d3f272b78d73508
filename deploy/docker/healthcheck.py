#!/usr/bin/env python3
"""Container health check over the standard gRPC health protocol (grpc.health.v1).

    syllabus-healthcheck ADDRESS [SERVICE]     exit 0 iff ADDRESS reports SERVICE as SERVING
    syllabus-healthcheck --temporal            exit 0 iff the Temporal frontend in
                                               $SYLLABUS_TEMPORAL_ADDRESS reports SERVING

Used by the images' HEALTHCHECK (Docker has no native gRPC probe; `grpc_health_probe` is not
installable offline) and by the worker's exec probes in the helm chart: the worker has no gRPC
server of its own, so "healthy" means "can reach the Temporal frontend it polls". Kubernetes
probes of the gRPC services use the kubelet's native `grpc:` probe instead of this script.
It needs only grpcio + grpcio-health-checking, which every image has through the project.
"""

from __future__ import annotations

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

TEMPORAL_SERVICE = "temporal.api.workflowservice.v1.WorkflowService"


def _read(var: str) -> bytes | None:
    path = os.environ.get(var, "")
    if not path:
        return None
    with open(path, "rb") as f:
        return f.read()


def _channel(address: str, temporal: bool) -> grpc.Channel:
    """A Syllabus server: over TLS when $SYLLABUS_TLS_CA_FILE names the CA (the kubelet's grpc probe
    cannot do TLS). Temporal's frontend: over TLS (mTLS with a client pair) when the
    SYLLABUS_TEMPORAL_TLS_* files are set, as the worker itself connects; else plaintext."""
    prefix = "SYLLABUS_TEMPORAL_TLS_" if temporal else "SYLLABUS_TLS_"
    ca = _read(prefix + "CA_FILE")
    cert, key = (_read(prefix + "CERT_FILE"), _read(prefix + "KEY_FILE")) if temporal else (None, None)
    if ca is None and cert is None:
        return grpc.insecure_channel(address)
    options = []
    if temporal and (name := os.environ.get("SYLLABUS_TEMPORAL_TLS_SERVER_NAME")):
        options.append(("grpc.ssl_target_name_override", name))
    credentials = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
    return grpc.secure_channel(address, credentials, options=options)


def check(address: str, service: str = "", timeout: float = 3.0, temporal: bool = False) -> bool:
    """True iff the health service at `address` answers SERVING for `service`."""
    with _channel(address, temporal) as channel:
        try:
            resp = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError as exc:
            print(f"{address} {service or '<server>'}: {exc.code().name}", file=sys.stderr)
            return False
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
    if resp.status != health_pb2.HealthCheckResponse.SERVING:
        print(f"{address} {service or '<server>'}: {status}", file=sys.stderr)
        return False
    return True


def main(argv: list[str]) -> int:
    if argv[:1] == ["--temporal"]:
        address = os.environ.get("SYLLABUS_TEMPORAL_ADDRESS", "127.0.0.1:7233")
        return 0 if check(address, TEMPORAL_SERVICE, temporal=True) else 1
    if not 1 <= len(argv) <= 2:
        print(__doc__, file=sys.stderr)
        return 2
    return 0 if check(argv[0], argv[1] if len(argv) == 2 else "") else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

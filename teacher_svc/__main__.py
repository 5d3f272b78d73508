"""Run the TeacherService.

    python -m teacher_svc                                   # on config.teacher_address (SYLLABUS_TEACHER_ADDRESS)
    python -m teacher_svc --address 127.0.0.1:50061 --preload bundled:smollm2-135m-instruct

Artifacts are read from and written to SYLLABUS_ARTIFACT_URL (default: $SYLLABUS_HOME/artifacts).
Health reports NOT_SERVING until the --preload model is loaded, and again on SIGTERM. Metrics at
SYLLABUS_TEACHER_METRICS_PORT, traces to SYLLABUS_OTLP_ENDPOINT (syllabus.telemetry).
"""

from __future__ import annotations

import argparse
import asyncio
import logging

from syllabus.config import load_config
from syllabus.serving import serve
from syllabus.telemetry import setup_tracing, start_metrics
from teacher_svc.server import build_servicer, create_server


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m teacher_svc", description="Run the TeacherService.")
    parser.add_argument("--address", help="host:port to listen on (default: config teacher_address)")
    parser.add_argument("--preload", metavar="MODEL", help="load this teacher model before going SERVING")
    return parser.parse_args(argv)


async def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    config = load_config(teacher_address=args.address)
    setup_tracing(config, "teacher")
    start_metrics("teacher", config.teacher_metrics_port, config.metrics_host)
    servicer = build_servicer(config)
    served = await create_server(config, config.teacher_address, servicer=servicer)
    ready = (lambda: servicer.models.get(args.preload)) if args.preload else None
    await serve(served, ready=ready)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(main())

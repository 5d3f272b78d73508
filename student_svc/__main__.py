"""Run the StudentService.

    python -m student_svc [--address HOST:PORT] [--preload MODEL]

Reads `SYLLABUS_*` settings (artifact store, default address `SYLLABUS_STUDENT_ADDRESS`). With
`--preload bundled:smollm2-135m-instruct` health stays NOT_SERVING until that model is loaded. Metrics at
SYLLABUS_STUDENT_METRICS_PORT, traces to SYLLABUS_OTLP_ENDPOINT (syllabus.telemetry).
"""

from __future__ import annotations

import argparse
import asyncio
import logging

from student_svc.server import create_server, make_servicer
from syllabus.config import load_config
from syllabus.serving import serve
from syllabus.telemetry import setup_tracing, start_metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m student_svc", description=__doc__.split("\n\n")[0])
    parser.add_argument("--address", help="host:port to bind (default: config student_address)")
    parser.add_argument("--preload", metavar="MODEL", help="base model to load before going SERVING")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = load_config()
    setup_tracing(config, "student")
    start_metrics("student", config.student_metrics_port, config.metrics_host)

    async def run() -> None:
        servicer = make_servicer(config)
        served = await create_server(config, args.address or config.student_address, servicer=servicer)
        ready = (lambda: servicer.preload(args.preload)) if args.preload else None
        await serve(served, ready=ready)

    asyncio.run(run())


if __name__ == "__main__":
    main()

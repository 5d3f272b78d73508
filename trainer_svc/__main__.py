"""Run the TrainerService.

    python -m trainer_svc [--address HOST:PORT] [--preload MODEL]

The address defaults to `SYLLABUS_TRAINER_ADDRESS` (127.0.0.1:50063); the artifact store is
`SYLLABUS_ARTIFACT_URL`, the log level `SYLLABUS_LOG_LEVEL`. `--preload bundled:smollm2-135m-instruct` loads the model once before the
service reports SERVING, so the first job does not pay for dequantizing the bundled GGUF. Metrics at
SYLLABUS_TRAINER_METRICS_PORT, traces to SYLLABUS_OTLP_ENDPOINT (syllabus.telemetry).
"""

from __future__ import annotations

import argparse
import asyncio
import logging

from syllabus.config import load_config
from syllabus.models import ModelNotFound, check_model_ref, load_model
from syllabus.serving import serve
from syllabus.telemetry import setup_tracing, start_metrics
from trainer_svc.server import create_server, jobs_for


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m trainer_svc", description=__doc__.split("\n\n")[0])
    parser.add_argument("--address", help="host:port to listen on (default: config trainer_address)")
    parser.add_argument("--preload", metavar="MODEL", help="load this model before reporting SERVING")
    args = parser.parse_args(argv)
    if args.preload:
        try:
            check_model_ref(args.preload)  # fail now, with the fix in the message, not after binding
        except ModelNotFound as e:
            parser.error(f"--preload: {e}")
    config = load_config(trainer_address=args.address)
    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    setup_tracing(config, "trainer")
    start_metrics("trainer", config.trainer_metrics_port, config.metrics_host)
    jobs = jobs_for(config)
    served = await create_server(config, config.trainer_address, jobs=jobs)
    try:
        await serve(served, ready=(lambda: load_model(args.preload)) if args.preload else None)
    finally:
        await jobs.close()


if __name__ == "__main__":
    asyncio.run(main())

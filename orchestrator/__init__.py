"""Orchestrator: the Temporal workflow that runs the distillation loop, its activities and worker.

`types` holds the dataclasses crossing the workflow boundary; `workflows` the deterministic loop;
`activities` the thin service calls and SQL records; `worker` runs both (`python -m orchestrator.worker`).
"""

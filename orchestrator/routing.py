"""Service task queues: each service's activities go to a Temporal task queue of their own, served by a
worker beside each replica of that service, so replicas share the work by pulling it.

With `service_queues` on, the workflow worker's `ServiceQueues` interceptor sends every activity in
`SERVICE_OF` to `<task_queue>-<service>`; a worker started with `--service <service>` polls that queue
with `service_worker_slots` activities at a time (1 by default) and calls only the replica it runs
beside. A busy replica's worker takes no new work, so the work goes where there is room (load-aware
by construction), one job's steps spread over replicas, and a training run is owned by the one
attempt Temporal hands out at a time; a retry after a replica died goes to a live one, which resumes
the run from its checkpoint. Off (the default), everything runs on `task_queue` as before.

Pure: no Temporal client, gRPC or SQL here, only names (the workflow sandbox imports it).
"""

from __future__ import annotations

SERVICES = ("teacher", "student", "trainer")

#: activity name -> the service it drives (its first call; `critique_examples` may also ask the
#: student for its answers, through `student_address`, which a cluster points at the student Service).
SERVICE_OF: dict[str, str] = {
    "generate_examples": "teacher",
    "analyze_errors": "teacher",
    "teacher_logprobs": "teacher",
    "critique_examples": "teacher",
    "critique_solutions": "teacher",
    "reason_examples": "teacher",
    "draft_rationales": "teacher",
    "build_pairs": "teacher",
    "judge_answers": "teacher",
    "evaluate_student": "student",
    "sample_student": "student",
    "score_samples": "student",
    "select_samples": "student",
    "score_preference": "student",
    "train_adapter": "trainer",
    "train_teacher_dpo": "trainer",
}


def service_queue(task_queue: str, service: str) -> str:
    """The task queue of `service`'s activities."""
    if service not in SERVICES:
        raise ValueError(f"unknown service {service!r}: one of {', '.join(SERVICES)}")
    return f"{task_queue}-{service}"


def activity_queues(task_queue: str) -> dict[str, str]:
    """activity name -> its task queue, for every activity that drives a service."""
    return {name: service_queue(task_queue, service) for name, service in SERVICE_OF.items()}

"""Following jobs on a running stack and comparing what they produced (tests/faults, tests/scale).

`fingerprint` is what a run produced with the job id taken out: row counts, artifacts by content,
training runs (losses, tokens), adapters, evaluations and scores; two runs of one task are equal
when their fingerprints are.
"""

from __future__ import annotations

import json
import sqlite3
import time

from orchestrator.stack import Stack
from syllabus.auth import client_token

JOB_TABLES = ("samples", "critiques", "scores", "selections", "training_runs", "evaluations", "rounds", "artifacts")


def gateway_client(stack: Stack):
    from syllabus_sdk import SyllabusClient

    return SyllabusClient(stack.config.gateway_address, token=client_token(stack.config), timeout=10)


def get_job(stack: Stack, job_id: str):
    """GetJob, riding out a gateway or Temporal that is being restarted."""
    from syllabus_sdk import SyllabusError

    deadline = time.monotonic() + 120
    while True:
        try:
            with gateway_client(stack) as client:
                return client.get_job(job_id)
        except SyllabusError as e:
            if e.code.name not in ("UNAVAILABLE", "DEADLINE_EXCEEDED") or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def submit(stack: Stack, task_yaml: str, job_id: str) -> None:
    with gateway_client(stack) as client:
        client.wait_ready()
        client.submit_job(task_yaml, job_id=job_id)


def wait_for(stack: Stack, job_id: str, step: str, min_train_step: int = 0, timeout: float = 300):
    """Poll until the job runs `step` (and, for training, has done `min_train_step` steps)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = get_job(stack, job_id)
        assert job.status == 1, f"job ended before reaching {step}: {job}"
        if job.current_step == step:
            detail = job.step_detail
            if not min_train_step:
                return job
            if detail.startswith("step ") and int(detail.split()[1].split("/")[0]) >= min_train_step:
                return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached {step}")


def finish(stack: Stack, job_id: str, timeout: float = 600):
    deadline = time.monotonic() + timeout
    while (job := get_job(stack, job_id)).status == 1:
        assert time.monotonic() < deadline, f"job {job_id} did not finish: {job}"
        time.sleep(0.5)
    return job


def without_timings(metrics: str) -> str:
    """A run's metrics without the wall seconds of its stages (how long, not what it produced)."""
    m = json.loads(metrics)
    m = json.loads(m) if isinstance(m, str) else m
    for stage in m.get("stages", []):
        stage.pop("seconds", None)
    return json.dumps(m, sort_keys=True)


def fingerprint(stack: Stack, job_id: str) -> dict:
    """What a run produced, with the job id taken out: row counts, artifacts by content, metrics."""
    con = sqlite3.connect(str(stack.config.home / "syllabus.db"))
    try:
        q = lambda sql: con.execute(sql, (job_id,)).fetchall()
        counts = {t: q(f"select count(*) from {t} where job_id = ?")[0][0] for t in JOB_TABLES}
        artifacts = sorted((r, k, sha) for r, k, sha in q("select round, kind, sha256 from artifacts where job_id = ?"))
        runs = sorted(  # tokens: a resumed run counts the tokens of its earlier attempts (the quota's unit)
            (r, st, n, steps, round(loss, 6), without_timings(m), tokens)
            for r, st, n, steps, loss, m, tokens in q(
                "select round, stage, samples, steps, mean_loss, metrics, tokens from training_runs where job_id = ?"
            )
        )
        adapters = sorted(
            sha for (sha,) in q("select c.sha256 from checkpoints c join training_runs t on c.training_run_id = t.id where t.job_id = ?")
        )
        evals = sorted(q("select round, stage, accuracy, correct, total from evaluations where job_id = ?"))
        scores = sorted((r, s, m, round(v, 6)) for r, s, m, v in q("select round, sample_id, metric, value from scores where job_id = ?"))
        job = q("select status, baseline_accuracy, final_accuracy from jobs where id = ?")
    finally:
        con.close()
    return {"job": job, "counts": counts, "artifacts": artifacts, "runs": runs, "adapters": adapters,
            "evaluations": evals, "scores": scores}

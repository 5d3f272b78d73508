"""Data steps that call no service: prepare the job's datasets, select the training set, finish."""

from __future__ import annotations

import logging

from temporalio import activity

from orchestrator.activities.base import ActivityBase
from orchestrator.keys import job_prefix, output_key
from orchestrator.metadata import sample_row
from orchestrator.types import (
    FinishJobInput,
    FinishJobOutput,
    PrepareJobInput,
    PrepareJobOutput,
    SelectInput,
    SelectOutput,
)
from syllabus.records import content_id, dumps_jsonl
from syllabus.selection import top_fraction

log = logging.getLogger(__name__)


class DataActivities(ActivityBase):
    @activity.defn
    async def prepare_job(self, inp: PrepareJobInput) -> PrepareJobOutput:
        """Write the seed, eval and validation sets as JSONL and record their samples. The job's row
        is the gateway's (`Metadata.claim_job`), created before the workflow starts."""
        task = self._task(inp.task_ref)
        prefix = job_prefix(inp.job_id)
        seeds: dict[str, dict] = {}
        for ex in task.seeds:
            sid = content_id(ex.input, ex.label)
            seeds.setdefault(
                sid,
                {
                    "id": sid,
                    "input": ex.input,
                    "label": ex.label,
                    "prompt": task.prompt_for(ex.input),
                    "response": ex.label,
                    "parent_id": None,
                    "provenance": {"method": "seed"},
                },
            )

        def items(examples) -> dict[str, dict]:
            out: dict[str, dict] = {}
            for ex in examples:
                eid = content_id(ex.input, ex.label)
                out.setdefault(eid, {"id": eid, "input": ex.input, "label": ex.label, "prompt": task.prompt_for(ex.input)})
            return out

        evals = items(task.eval)
        # The last of duplicate validation items wins, as before (a dict comprehension).
        validation = {content_id(ex.input, ex.label): ex for ex in (task.validation or task.seeds)}
        validation = items(validation.values())
        seeds_ref = self._publish_once(f"{prefix}/seeds.jsonl", dumps_jsonl(seeds.values()))
        eval_ref = self._publish_once(f"{prefix}/eval.jsonl", dumps_jsonl(evals.values()))
        validation_ref = self._publish_once(f"{prefix}/validation.jsonl", dumps_jsonl(validation.values()))
        # A prefix, spelt as the gateway spells it (trailing slash).
        artifacts_uri = self.store.uri_for(prefix).rstrip("/") + "/"

        rows = [
            sample_row(inp.job_id, 0, split, r, ref.uri)
            for split, records, ref in (("seed", seeds, seeds_ref), ("eval", evals, eval_ref))
            for r in records.values()
        ]
        await self._db(self.metadata.record_samples, rows)
        if task.validation:
            val_rows = [sample_row(inp.job_id, 0, "validation", r, validation_ref.uri) for r in validation.values()]
            await self._db(self.metadata.record_samples, val_rows)
        await self._record_artifacts(
            inp.job_id, 0, {"task": inp.task_ref, "seeds": seeds_ref, "eval": eval_ref, "validation": validation_ref}
        )
        return PrepareJobOutput(
            seeds=seeds_ref,
            eval_set=eval_ref,
            seed_count=len(seeds),
            eval_count=len(evals),
            artifacts_uri=artifacts_uri,
            validation=validation_ref,
        )

    @activity.defn
    async def select_samples(self, inp: SelectInput) -> SelectOutput:
        """Select the most learnable kept examples and write the training set (selected + seeds)."""
        kept = {r["id"]: r for r in self._read_jsonl(inp.kept)}
        scores = [r for r in self._read_jsonl(inp.scores) if r["id"] in kept]
        chosen = top_fraction(scores, "learnability", inp.top_fraction)
        seeds = self._read_jsonl(inp.seeds)
        chosen_ids = set(chosen)
        train = [kept[i] for i in chosen] + [s for s in seeds if s["id"] not in chosen_ids]

        params = {"top_fraction": inp.top_fraction, "metric": "learnability"}
        key = output_key(inp.job_id, inp.round, "select", [inp.kept, inp.scores, inp.seeds], params, "jsonl")
        train_set = self._publish_once(key, dumps_jsonl(train))
        await self._db(self.metadata.record_selection, inp.job_id, inp.round, chosen)
        await self._record_artifacts(inp.job_id, inp.round, {"train-set": train_set})
        return SelectOutput(train_set=train_set, selected=len(chosen), trained=len(train))

    @activity.defn
    async def finish_job(self, inp: FinishJobInput) -> FinishJobOutput:
        """Mark the job's row completed / failed / cancelled with its accuracies."""
        updated = await self._db(
            self.metadata.finish_job, inp.job_id, inp.status, inp.baseline_accuracy, inp.final_accuracy
        )
        if not updated:
            # The job was started without the gateway, which creates its row: nothing to mark.
            log.warning("finish_job: no row for job %s", inp.job_id)
        return FinishJobOutput(status=inp.status)

"""Data steps that call no service: prepare the job's datasets and plan, finish."""

from __future__ import annotations

import logging

from temporalio import activity
from temporalio.exceptions import ApplicationError

from orchestrator import reasoning
from orchestrator.activities.base import ActivityBase
from orchestrator.activity_io import (
    ArteSettings,
    FinishJobInput,
    FinishJobOutput,
    PrepareJobInput,
    PrepareJobOutput,
    TailorInputsInput,
    TailorInputsOutput,
)
from orchestrator.keys import job_prefix
from orchestrator.metadata import sample_row
from orchestrator.types import LoopPlan
from syllabus.records import content_id, dumps_jsonl
from syllabus.tasks import TEACHER_KEY, TaskSpec

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
                    "response": task.response_for(ex.label, ex.solution),
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
        # The last of duplicate validation items wins, as before (a dict comprehension). Never the
        # seeds: a method that reads this split is refused at validation when the task has none.
        validation = {content_id(ex.input, ex.label): ex for ex in task.validation}
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
            plan=plan_of(task),
        )

    @activity.defn
    async def tailor_inputs(self, inp: TailorInputsInput) -> TailorInputsOutput:
        """ARTE's inputs: draft questions (this round's generated questions, then the seeds, up to
        tailor.questions) and the validation bank the student's probe set Dpref is chosen from (the
        tailor.probe_k most discriminative items, chosen by the StudentService)."""
        task = self._task(inp.task_ref)
        spec = task.tailor
        if spec is None:
            raise ApplicationError("the task has no tailor section", type="INVALID_ARGUMENT", non_retryable=True)
        candidates = self._read_jsonl(inp.candidates) if inp.candidates is not None else []
        questions = tailor_questions(self._read_jsonl(inp.seeds), candidates, spec.questions)
        probe = [{"id": r["id"], "prompt": task.prompt_for(r["input"]), "answer": r["label"]} for r in self._read_jsonl(inp.validation)]
        if not probe:  # the task validator asks for a validation split: a job prepared without one
            raise ApplicationError("tailor: the validation split is empty", type="INVALID_ARGUMENT", non_retryable=True)
        prefix = f"{job_prefix(inp.job_id)}/round-{inp.round}"
        return TailorInputsOutput(
            questions=self._publish_once(f"{prefix}/tailor-questions.jsonl", dumps_jsonl(questions)),
            probe_set=self._publish_once(f"{prefix}/tailor-probe.jsonl", dumps_jsonl(probe)),
            settings=ArteSettings(
                styles=list(spec.styles), draft_temperature=spec.draft_temperature, probe_k=spec.probe_k,
                draft_max_new_tokens=spec.draft_max_new_tokens, probe_max_new_tokens=spec.probe_max_new_tokens,
                lora_rank=spec.lora_rank, lora_alpha=spec.lora_alpha, epochs=spec.epochs,
                learning_rate=spec.learning_rate, batch_size=spec.batch_size, beta=spec.beta,
                seed=task.generate.seed,
            ),
        )

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


def tailor_questions(seeds: list[dict], candidates: list[dict], limit: int) -> list[dict]:
    """ARTE's draft questions: the round's generated questions first (ARTE's drafts are the teacher's
    questions; each carries its generation prompt and reply, so it can make question-level pairs),
    then the seeds. A generated question's "group" is its label: each expansion prompt shows other
    seeds and yields one question, so questions are ranked against those of the same label."""
    generated = {c["id"]: c for c in candidates if isinstance(c.get("generation"), dict)}
    questions = reasoning.questions(list(generated.values()), [*seeds, *candidates], limit)
    for q in questions:
        if (c := generated.get(q["id"])) is not None:
            gen = c["generation"]
            q |= {"prompt": gen["prompt"], "completion": gen["completion"], "group": f"label:{c['label']}"}
    return questions


def plan_of(task: TaskSpec) -> LoopPlan:
    """The steps `task` turns on (see `LoopPlan`)."""
    recipe = task.train.recipe
    stages = [st.name or f"stage-{i + 1}" for i, st in enumerate(recipe.stages)] if recipe else []
    return LoopPlan(
        expand=task.generate.mode("expand") is not None,
        targeted=task.generate.mode("targeted") is not None,
        critique=task.critique.mode,
        reasoning=[m for m in ("rationales", "rft") if task.generate.mode(m) is not None],
        metrics=list(task.score.metrics),
        select_policy=task.select.policy,
        stages=stages,
        tailor_every=task.tailor.every if task.tailor is not None else 0,
        heldout=bool(recipe) and any(st.curriculum.policy == "pudf" for st in recipe.stages),
        answers_by_reasoning=task.kind_spec.reasons,
        budget_by_car=task.generate.budget == "car",
        judge_eval=task.kind_spec.judged,
        baselines=list(task.baselines.arms) if task.baselines is not None else [],
        baseline_repeats=task.baselines.repeats if task.baselines is not None else 1,
        distill_top_k=recipe.teacher_top_k if recipe else 0,
        opd_chunks=recipe.stages[0].on_policy.chunks if recipe and recipe.on_policy else 0,
        teachers=[TEACHER_KEY + t.model for t in task.teachers or ()],
    )

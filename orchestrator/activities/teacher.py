"""Steps the TeacherService computes: generate (seed expansion + targeted), critique, analyze errors."""

from __future__ import annotations

import json
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from orchestrator.activities.base import ActivityBase
from orchestrator.keys import output_key
from orchestrator.metadata import sample_row
from orchestrator.types import (
    AnalyzeInput,
    AnalyzeOutput,
    CritiqueInput,
    CritiqueOutput,
    GenerateInput,
    GenerateOutput,
)
from syllabus.artifacts import ArtifactRef
from syllabus.pb import ref_from_pb, ref_to_pb
from syllabus.records import dumps_jsonl
from syllabus.tasks import TaskSpec
from syllabus_sdk.common.v1 import common_pb2
from syllabus_sdk.teacher.v1 import teacher_pb2

STATS_SUFFIX = ".stats.json"  # the teacher's counts of the Generate run that published the examples


def _generate_request(
    task: TaskSpec, inp: GenerateInput, key: str, sampling: dict, **mode: Any
) -> teacher_pb2.GenerateRequest:
    """A Generate by the task's teacher from the job's seeds, the eval set given to the leakage guard;
    `mode` the fields of the kind of generation (per_label, or mode/skills/per_skill)."""
    return teacher_pb2.GenerateRequest(
        model=common_pb2.ModelRef(base=task.teacher.model),
        kind=common_pb2.TASK_KIND_CLASSIFICATION,
        instructions=task.instructions,
        labels=task.labels,
        seeds=ref_to_pb(inp.seeds),
        sampling=common_pb2.SamplingParams(**sampling),
        batch_size=task.generate.batch_size,
        output_key=key,
        round=inp.round,
        eval=ref_to_pb(inp.eval_set),
        **mode,
    )


class TeacherActivities(ActivityBase):
    async def _generate(self, key: str, request: teacher_pb2.GenerateRequest, what: str) -> tuple[ArtifactRef, int]:
        """(examples, leaked count) of a Generate whose output is `key`: published already (the
        counts from the teacher's stats beside it), else computed now."""
        leaked = 0

        async def call() -> ArtifactRef | None:
            nonlocal leaked
            response = await self._teacher(lambda t: t.generate(request))
            leaked = response.leaked_removed
            return ref_from_pb(response.examples)

        if (existing := self.store.stat(key)) is None:
            return await self.published_or_call(key, call, what), leaked
        if stats := self.store.stat(key + STATS_SUFFIX):
            leaked = int(json.loads(self._read(stats)).get("leaked_removed", 0))
        return existing, leaked

    @activity.defn
    async def generate_examples(self, inp: GenerateInput) -> GenerateOutput:
        """TeacherService.Generate: expand the seeds into new labelled examples; records the samples."""
        task = self._task(inp.task_ref)
        g = task.generate
        sampling = {
            "temperature": g.temperature,
            "top_p": g.top_p,
            "max_new_tokens": g.max_new_tokens,
            "n": g.n,
            "seed": g.seed + inp.round,
        }
        params = {
            "model": task.teacher.model,
            "kind": task.kind,
            "instructions": task.instructions,
            "labels": task.labels,
            "per_label": g.per_label,
            "batch_size": g.batch_size,
            "sampling": sampling,
            "round": inp.round,
        }
        key = output_key(inp.job_id, inp.round, "generate", [inp.seeds, inp.eval_set], params, "jsonl")
        request = _generate_request(task, inp, key, sampling, per_label=g.per_label)
        examples, leaked = await self._generate(key, request, "TeacherService.Generate")

        records = self._read_jsonl(examples)
        targeted: list[dict] = []
        if inp.skills is not None:
            targeted_ref, targeted_leaked = await self._generate_targeted(inp, task, params, sampling)
            leaked += targeted_leaked
            seen = {r["id"] for r in records}
            targeted = [r for r in self._read_jsonl(targeted_ref) if r["id"] not in seen]
            if targeted:  # one examples artifact for the critique: expansion + targeted
                key_all = output_key(inp.job_id, inp.round, "generate-all", [examples, targeted_ref], {}, "jsonl")
                examples = self._publish_once(key_all, dumps_jsonl(records + targeted))
                records = records + targeted
        rows = [sample_row(inp.job_id, inp.round, "generated", r, examples.uri) for r in records]
        await self._db(self.metadata.record_samples, rows)
        await self._record_artifacts(inp.job_id, inp.round, {"generated": examples})
        return GenerateOutput(examples=examples, generated=len(records), leaked=leaked, targeted=len(targeted))

    async def _generate_targeted(
        self, inp: GenerateInput, task: TaskSpec, params: dict, sampling: dict
    ) -> tuple[ArtifactRef, int]:
        """TeacherService.Generate in TARGETED mode for the skills AnalyzeErrors named (error-driven
        generation, arXiv 2412.15652): (examples, leaked count)."""
        per_skill = task.generate.targeted_per_skill
        key = output_key(
            inp.job_id, inp.round, "generate-targeted", [inp.seeds, inp.eval_set, inp.skills],
            {**params, "per_skill": per_skill}, "jsonl",
        )  # fmt: skip
        request = _generate_request(
            task, inp, key, sampling, mode=teacher_pb2.GENERATE_MODE_TARGETED, skills=ref_to_pb(inp.skills), per_skill=per_skill
        )
        return await self._generate(key, request, "TeacherService.Generate (targeted)")

    @activity.defn
    async def analyze_errors(self, inp: AnalyzeInput) -> AnalyzeOutput:
        """TeacherService.AnalyzeErrors: name the student's confusions on the validation split."""
        task = self._task(inp.task_ref)
        key = output_key(inp.job_id, inp.round, "analyze", [inp.predictions, inp.validation], {"labels": task.labels}, "jsonl")
        request = teacher_pb2.AnalyzeErrorsRequest(
            kind=common_pb2.TASK_KIND_CLASSIFICATION,
            labels=task.labels,
            predictions=ref_to_pb(inp.predictions),
            eval=ref_to_pb(inp.validation),
            output_key=key,
        )

        async def call() -> ArtifactRef | None:
            return ref_from_pb((await self._teacher(lambda t: t.analyze_errors(request))).skills)

        skills = await self.published_or_call(key, call, "TeacherService.AnalyzeErrors")
        records = self._read_jsonl(skills)
        await self._record_artifacts(inp.job_id, inp.round, {"skills": skills})
        return AnalyzeOutput(skills=skills, skill_count=len(records), wrong=sum(int(r.get("count", 0)) for r in records))

    @activity.defn
    async def critique_examples(self, inp: CritiqueInput) -> CritiqueOutput:
        """TeacherService.Critique (judge): keep or drop each generated example; records the critiques."""
        task = self._task(inp.task_ref)
        mode = task.critique.mode
        params = {"model": task.teacher.model, "mode": mode, "kind": task.kind, "labels": task.labels}
        prefix = output_key(inp.job_id, inp.round, "critique", [inp.examples, inp.seeds], params)
        request = teacher_pb2.CritiqueRequest(
            model=common_pb2.ModelRef(base=task.teacher.model),
            mode=teacher_pb2.CRITIQUE_MODE_JUDGE,
            kind=common_pb2.TASK_KIND_CLASSIFICATION,
            labels=task.labels,
            examples=ref_to_pb(inp.examples),
            seeds=ref_to_pb(inp.seeds),
            output_key=prefix,
        )
        kept = self.store.stat(f"{prefix}-kept.jsonl")
        critiques = self.store.stat(f"{prefix}-critiques.jsonl")
        if kept is None or critiques is None:
            response = await self._teacher(lambda t: t.critique(request))
            kept, critiques = ref_from_pb(response.kept), ref_from_pb(response.critiques)
            if kept is None or critiques is None:
                raise ApplicationError("TeacherService.Critique returned no outputs", type="DATA_LOSS")

        verdicts = self._read_jsonl(critiques)
        kept_count = len(self._read_jsonl(kept))
        await self._db(self.metadata.record_critiques, inp.job_id, mode, verdicts)
        await self._record_artifacts(inp.job_id, inp.round, {"kept": kept, "critiques": critiques})
        return CritiqueOutput(
            kept=kept,
            critiques=critiques,
            kept_count=kept_count,
            dropped_count=sum(1 for v in verdicts if not v["keep"]),
        )

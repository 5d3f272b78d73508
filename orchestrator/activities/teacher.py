"""Steps the TeacherService computes: generate (seed expansion + targeted), critique (rules, or rules
then a model-based mode; an answer kind's solutions after reasoning), reasoning (rationales, RFT) and
error analysis."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from orchestrator import critique_modes, reasoning
from orchestrator.activities.base import ActivityBase, no_output
from orchestrator.activity_io import (
    AnalyzeInput,
    AnalyzeOutput,
    CritiqueInput,
    CritiqueOutput,
    GenerateInput,
    GenerateOutput,
    LogprobsInput,
    LogprobsOutput,
    ReasonInput,
    ReasonOutput,
)
from orchestrator.budget import scaled
from orchestrator.keys import output_key
from orchestrator.metadata import sample_row
from orchestrator.privileged import privileged_context
from syllabus import topk
from syllabus.artifacts import ArtifactRef, generate_stats_key
from syllabus.pb import ref_from_pb, ref_to_pb, task_kind
from syllabus.records import dumps_jsonl
from syllabus.tasks import TEACHER_KEY, TaskSpec, TeacherSpec
from syllabus_sdk.common.v1 import common_pb2
from syllabus_sdk.student.v1 import student_pb2
from syllabus_sdk.teacher.v1 import teacher_pb2


def _teacher_ref(task: TaskSpec, adapter: ArtifactRef | None) -> common_pb2.ModelRef:
    """The task's teacher, tailored by `adapter` (ARTE) when given."""
    return common_pb2.ModelRef(base=task.teacher.model, adapter=ref_to_pb(adapter))


def teacher_temperature(task: TaskSpec, temperature: float, teacher_adapter: ArtifactRef | None) -> float:
    """The sampling temperature of a generation step: ARTE's aligned teacher (an adapter from
    tailoring) regenerates at `tailor.regenerate_temperature`, greedy (0) as in the paper, whatever
    the step's own temperature; the base teacher samples at the step's."""
    if teacher_adapter is not None and task.tailor is not None:
        return task.tailor.regenerate_temperature
    return temperature


def expand_sampling(task: TaskSpec, round_: int, teacher_adapter: ArtifactRef | None) -> dict:
    """SamplingParams fields of expand and targeted generation in round `round_`."""
    g = task.generate
    return {"temperature": teacher_temperature(task, g.temperature, teacher_adapter), "top_p": g.top_p,
            "max_new_tokens": g.max_new_tokens, "n": g.n, "seed": g.seed + round_}  # fmt: skip


def reasoning_sampling(task: TaskSpec, mode: str, round_: int, teacher_adapter: ArtifactRef | None) -> dict:
    """SamplingParams fields of the rationales or rft mode. RFT keeps its own temperature with an
    aligned teacher too: k greedy samples would be one reasoning path."""
    spec = task.generate.mode(mode)
    temperature = spec.temperature if mode == "rft" else teacher_temperature(task, spec.temperature, teacher_adapter)
    return {"temperature": temperature, "top_p": 1.0, "max_new_tokens": spec.max_new_tokens, "n": 1,
            "seed": task.generate.seed + round_}  # fmt: skip


def _generate_request(
    task: TaskSpec, inp: GenerateInput, key: str, sampling: dict, **mode: Any
) -> teacher_pb2.GenerateRequest:
    """A Generate by the task's teacher from the job's seeds, the eval set given to the leakage guard;
    `mode` the fields of the kind of generation (per_label, or mode/skills/per_skill)."""
    return teacher_pb2.GenerateRequest(
        model=_teacher_ref(task, inp.teacher_adapter),
        kind=task_kind(task.kind),
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
        if stats := self.store.stat(generate_stats_key(key)):
            leaked = int(json.loads(self._read(stats)).get("leaked_removed", 0))
        return existing, leaked

    @activity.defn
    async def generate_examples(self, inp: GenerateInput) -> GenerateOutput:
        """TeacherService.Generate: seed expansion (`expand`) and, with skills from the previous round,
        targeted generation, as one examples artifact; records the samples."""
        task = self._task(inp.task_ref)
        g = task.generate
        sampling = expand_sampling(task, inp.round, inp.teacher_adapter)
        params = {
            "model": task.teacher.model,
            "teacher_adapter": inp.teacher_adapter.sha256 if inp.teacher_adapter else None,
            "kind": task.kind,
            "instructions": task.instructions,
            "labels": task.labels,
            "batch_size": g.batch_size,
            "sampling": sampling,
            "round": inp.round,
        }
        parts: list[tuple[ArtifactRef, list[dict]]] = []
        leaked = 0
        by_teacher: dict[str, int] = {}
        if (expand := g.mode("expand")) is not None and task.teachers:
            # Several teachers: each expands its share (the task's shares at first, then by its CAR).
            total = sum(t.share for t in task.teachers)
            seen: set[str] = set()
            for t in task.teachers:
                name = TEACHER_KEY + t.model
                share = inp.budget.get(name, len(task.teachers) * t.share / total)
                per_label = scaled(expand.per_label or g.per_label, inp.budget.get("expand", 1.0) * share)
                key = output_key(inp.job_id, inp.round, "generate", [inp.seeds, inp.eval_set],
                                 {**params, "model": t.model, "per_label": per_label}, "jsonl")  # fmt: skip
                request = _generate_request(task, inp, key, sampling, per_label=per_label)
                request.model.CopyFrom(common_pb2.ModelRef(base=t.model))
                ref, n_leaked = await self._generate(key, request, f"TeacherService.Generate ({t.model})")
                leaked += n_leaked
                records = [r for r in self._read_jsonl(ref) if r["id"] not in seen]  # a duplicate counts for the first
                seen.update(r["id"] for r in records)
                by_teacher[name] = len(records)
                parts.append((ref, records))
        elif expand is not None:
            per_label = scaled(expand.per_label or g.per_label, inp.budget.get("expand", 1.0))
            key = output_key(inp.job_id, inp.round, "generate", [inp.seeds, inp.eval_set], {**params, "per_label": per_label}, "jsonl")
            request = _generate_request(task, inp, key, sampling, per_label=per_label)
            ref, leaked = await self._generate(key, request, "TeacherService.Generate")
            parts.append((ref, self._read_jsonl(ref)))
        targeted_count = 0
        if inp.skills is not None and (targeted := g.mode("targeted")) is not None:
            per_skill = scaled(targeted.per_skill, inp.budget.get("targeted", 1.0))
            ref, targeted_leaked = await self._generate_targeted(inp, task, params, sampling, per_skill)
            leaked += targeted_leaked
            seen = {r["id"] for _, rs in parts for r in rs}
            records = [r for r in self._read_jsonl(ref) if r["id"] not in seen]
            targeted_count = len(records)
            parts.append((ref, records))
        records = [r for _, rs in parts for r in rs]
        if not parts:
            return GenerateOutput(examples=None, generated=0)
        examples = parts[0][0]
        if len(parts) > 1:  # one examples artifact for the critique: expansion + targeted
            key_all = output_key(inp.job_id, inp.round, "generate-all", [ref for ref, _ in parts], {}, "jsonl")
            examples = self._publish_once(key_all, dumps_jsonl(records))
        rows = [sample_row(inp.job_id, inp.round, "generated", r, examples.uri) for r in records]
        await self._db(self.metadata.record_samples, rows)
        await self._record_artifacts(inp.job_id, inp.round, {"generated": examples})
        return GenerateOutput(examples=examples, generated=len(records), leaked=leaked, targeted=targeted_count, by_teacher=by_teacher)

    async def _generate_targeted(
        self, inp: GenerateInput, task: TaskSpec, params: dict, sampling: dict, per_skill: int
    ) -> tuple[ArtifactRef, int]:
        """TeacherService.Generate in TARGETED mode for the skills AnalyzeErrors named (error-driven
        generation, arXiv 2412.15652): (examples, leaked count)."""
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
            kind=task_kind(task.kind),
            labels=task.labels,
            predictions=ref_to_pb(inp.predictions),
            eval=ref_to_pb(inp.validation),
            output_key=key,
        )
        if task.kind_spec.reasons:  # the teacher names the skill each wrong answer misses
            request.model.CopyFrom(_teacher_ref(task, None))
            # 48 tokens: the JSON skill reply's few words fit (structured.fit leaves ~36 characters).
            request.sampling.CopyFrom(common_pb2.SamplingParams(temperature=0.0, top_p=1.0, max_new_tokens=48, n=1))

        async def call() -> ArtifactRef | None:
            return ref_from_pb((await self._teacher(lambda t: t.analyze_errors(request))).skills)

        skills = await self.published_or_call(key, call, "TeacherService.AnalyzeErrors")
        records = self._read_jsonl(skills)
        await self._record_artifacts(inp.job_id, inp.round, {"skills": skills})
        return AnalyzeOutput(skills=skills, skill_count=len(records), wrong=sum(int(r.get("count", 0)) for r in records))

    @activity.defn
    async def teacher_logprobs(self, inp: LogprobsInput) -> LogprobsOutput:
        """TeacherService.TopLogprobs: the teacher's top-k at every response token of a training set,
        for the recipe's kd stages (content-addressed by the teacher: a retry or a rerun finds them).
        Without a dataset, only the check that teacher and student tokenize alike: a mismatch, or a
        teacher that gives no log-probs, fails the job at once (FAILED_PRECONDITION, non-retryable)."""
        task = self._task(inp.task_ref)
        recipe = task.train.recipe
        top_k = recipe.teacher_top_k if recipe else 0
        if not top_k:
            raise ApplicationError("the task's recipe has no kd stage", type="INVALID_ARGUMENT", non_retryable=True)
        prefix = output_key(inp.job_id, inp.round, "teacher-logprobs", [], {})

        async def call(teacher: TeacherSpec, dataset: ArtifactRef | None) -> teacher_pb2.TopLogprobsResponse:
            request = teacher_pb2.TopLogprobsRequest(
                model=common_pb2.ModelRef(base=teacher.model), student=common_pb2.ModelRef(base=task.student.model),
                records=ref_to_pb(dataset), top_k=top_k, max_len=recipe.max_seq_len, output_prefix=prefix,
                context=privileged_context(task, teacher.context),
            )  # fmt: skip
            return await self._teacher(lambda t: t.top_logprobs(request))

        if not task.teachers:
            resp = await call(task.teacher, inp.dataset)
            ref, out = ref_from_pb(resp.logprobs), LogprobsOutput(None, resp.records, resp.tokens, dict(resp.teacher), resp.existing)
        elif inp.dataset is None:  # the check, for every teacher
            manifests = [dict((await call(t, None)).teacher) for t in task.teachers]
            ref, out = None, LogprobsOutput(None, 0, 0, {"id": "+".join(m["id"] for m in manifests), "teachers": json.dumps(manifests)})
        else:
            ref, out = await self._routed_logprobs(task, inp, call)
        if inp.dataset is not None:
            if ref is None:
                raise no_output("TeacherService.TopLogprobs")
            await self._record_artifacts(inp.job_id, inp.round, {"teacher-logprobs": ref})
        out.logprobs = ref
        return out

    async def _routed_logprobs(self, task: TaskSpec, inp: LogprobsInput, call) -> tuple[ArtifactRef, LogprobsOutput]:
        """Several teachers: each record's top-k from the teacher that wrote it (its provenance model;
        seeds and other records: the first teacher), one TopLogprobs per teacher on its records, the
        rows merged into one artifact whose manifest lists every teacher and how many records it scored."""
        models = {t.model: t for t in task.teachers}
        groups: dict[str, list[dict]] = {t.model: [] for t in task.teachers}
        for r in self._read_jsonl(inp.dataset):
            model = (r.get("provenance") or {}).get("model")
            groups[model if model in models else task.teachers[0].model].append(r)
        rows: dict = {}
        manifests = []
        k = 0
        for model, records in groups.items():
            if not records:
                continue
            subset = self._publish_once(
                output_key(inp.job_id, inp.round, "teacher-logprobs-input", [inp.dataset], {"teacher": model}, "jsonl"),
                dumps_jsonl(records),
            )
            resp = await call(models[model], subset)
            part = topk.loads(self._read(ref_from_pb(resp.logprobs)))
            rows.update(part.rows)
            k = part.k
            manifests.append({**dict(resp.teacher), "records": str(len(records))})
        manifest = {"id": "+".join(m["id"] for m in manifests), "teachers": json.dumps(manifests, sort_keys=True)}
        data = topk.dumps(rows, k, manifest)
        ref = self._publish_once(output_key(inp.job_id, inp.round, "teacher-logprobs-routed", [inp.dataset], manifest, "npz"), data)
        return ref, LogprobsOutput(ref, len(rows), sum(len(r) for r in rows.values()), manifest)

    async def _critique_call(
        self, task: TaskSpec, inp: CritiqueInput, mode: int, examples: ArtifactRef, prefix: str
    ) -> tuple[ArtifactRef, ArtifactRef]:
        """(kept, critiques) of one TeacherService.Critique whose outputs live under `prefix`."""
        c = task.critique
        request = teacher_pb2.CritiqueRequest(
            model=_teacher_ref(task, inp.teacher_adapter),
            mode=mode,
            kind=task_kind(task.kind),
            labels=task.labels,
            examples=ref_to_pb(examples),
            seeds=ref_to_pb(inp.seeds),
            output_key=prefix,
            sampling=common_pb2.SamplingParams(
                temperature=c.temperature, top_p=1.0, max_new_tokens=c.max_new_tokens, n=1, seed=task.generate.seed + inp.round
            ),
            batch_size=task.generate.batch_size,
            retries=c.retries,
        )
        kept = self.store.stat(f"{prefix}-kept.jsonl")
        critiques = self.store.stat(f"{prefix}-critiques.jsonl")
        if kept is None or critiques is None:
            response = await self._teacher(lambda t: t.critique(request))
            kept, critiques = ref_from_pb(response.kept), ref_from_pb(response.critiques)
            if kept is None or critiques is None:
                raise ApplicationError("TeacherService.Critique returned no outputs", type="DATA_LOSS")
        return kept, critiques

    async def _model_critique(
        self, task: TaskSpec, inp: CritiqueInput, records: list[dict], prefix: str
    ) -> tuple[critique_modes.Outcome, ArtifactRef, dict[str, dict[str, int]]]:
        """The task's model-based critique mode on `records` (inputs under `prefix`): what it keeps,
        the records it writes and one verdict each (`critique_modes.interpret`), its critiques, and
        how its replies parsed (`critique_modes.parse_counts`)."""
        mode = task.critique.mode
        answers = await self._student_answers(task, inp, records, prefix) if mode == "rubric" else None
        model_mode, examples = critique_modes.request_examples(task, mode, records, answers)
        ex_ref = self._publish_once(f"{prefix}-{mode}-input.jsonl", dumps_jsonl(examples))
        model_prefix = output_key(
            inp.job_id, inp.round, f"critique-{mode}", [ex_ref, inp.teacher_adapter],
            {"model": task.teacher.model, "kind": task.kind, "labels": task.labels, "mode": mode, "critique": task.critique.model_dump()},
        )  # fmt: skip
        _, model_critiques = await self._critique_call(task, inp, model_mode, ex_ref, model_prefix)
        replies = self._read_jsonl(model_critiques)
        return critique_modes.interpret(task, mode, records, replies), model_critiques, critique_modes.parse_counts(replies)

    async def _student_answers(self, task: TaskSpec, inp: CritiqueInput, records: list[dict], prefix: str) -> dict[str, str]:
        """CITING's student answers: StudentService.Evaluate's greedy generation by the current
        student (`inp.student_adapter`) for each record's prompt, by record id. Classification asks
        for the generation scorer, so the answer is what the student writes, not the likeliest label."""
        if not records:  # nothing to answer: an empty eval set is no Evaluate request
            return {}
        items = [{"id": r["id"], "prompt": r["prompt"], "label": r["label"]} for r in records]
        questions = self._publish_once(f"{prefix}-citing-questions.jsonl", dumps_jsonl(items))
        params = {"model": task.student.model, "labels": task.labels, "max_new_tokens": task.evaluate.max_new_tokens}
        key = output_key(inp.job_id, inp.round, "citing-answers", [questions, inp.student_adapter], params, "jsonl")
        scorer = student_pb2.EVAL_SCORER_UNSPECIFIED if critique_modes.critiques_solutions(task) else student_pb2.EVAL_SCORER_LABEL_GENERATION
        request = student_pb2.EvaluateRequest(
            model=common_pb2.ModelRef(base=task.student.model, adapter=ref_to_pb(inp.student_adapter)),
            kind=task_kind(task.kind), eval_set=ref_to_pb(questions), labels=task.labels, output_key=key,
            scorer=scorer, max_new_tokens=task.evaluate.max_new_tokens,
        )  # fmt: skip

        async def call() -> ArtifactRef | None:
            return ref_from_pb((await self._student(lambda s: s.evaluate(request))).predictions)

        predictions = await self.published_or_call(key, call, "StudentService.Evaluate (CITING answers)")
        await self._record_artifacts(inp.job_id, inp.round, {"citing-answers": predictions})
        return {p["id"]: p.get("generation", "") for p in self._read_jsonl(predictions)}

    async def _record_critique(
        self, inp: CritiqueInput, mode: str, kept: ArtifactRef, records: list[dict], verdicts: list[dict], outputs: dict
    ) -> Counter:
        """Record the samples a critique wrote (relabelled, reflected, revised, critiques), its verdicts
        and its artifacts; the drops by reason code."""
        repaired = [r for r in records if r.get("provenance", {}).get("method") in critique_modes.REPAIR_METHODS]
        if repaired:
            await self._db(self.metadata.record_samples, [sample_row(inp.job_id, inp.round, "repaired", r, kept.uri) for r in repaired])
        await self._db(self.metadata.record_critiques, inp.job_id, mode, verdicts)
        await self._record_artifacts(inp.job_id, inp.round, outputs)
        return Counter(critique_modes.reason_code(v["reason"]) for v in verdicts if not v["keep"])

    @activity.defn
    async def critique_examples(self, inp: CritiqueInput) -> CritiqueOutput:
        """TeacherService.Critique: the rule filter, then (judge, cft, rubric, reflection) the teacher
        model on what the rules kept; records one critique per example and the repaired samples.

        The model's reply decides per mode (`orchestrator.critique_modes`): judge/cft keep an example
        whose critique concludes "right"; rubric (CITING) and reflection relabel it with the one label
        the revision names (reflection also rewrites the input). A reply that never parses drops the
        example with reason "unparsable" and its raw text kept in the critiques artifact. An answer
        kind's examples are questions: the rules vet them here, and the model mode reads their
        solutions later (`critique_solutions`)."""
        task = self._task(inp.task_ref)
        mode = "rules" if critique_modes.critiques_solutions(task) else task.critique.mode
        params = {"model": task.teacher.model, "kind": task.kind, "labels": task.labels}
        prefix = output_key(inp.job_id, inp.round, "critique", [inp.examples, inp.seeds], {**params, "mode": "rules"})
        rule_kept, rule_critiques = await self._critique_call(task, inp, teacher_pb2.CRITIQUE_MODE_RULES, inp.examples, prefix)
        verdicts = self._read_jsonl(rule_critiques)
        kept_records = self._read_jsonl(rule_kept)
        outputs: dict[str, ArtifactRef | None] = {"rule-critiques": rule_critiques}
        extra: list[dict] = []  # training records the critique itself makes (cft critiques)
        parsing: dict[str, dict[str, int]] = {}
        if mode != "rules" and kept_records:
            outcome, outputs["critiques"], parsing = await self._model_critique(task, inp, kept_records, prefix)
            kept_records, extra = outcome.kept, outcome.extra
            verdicts = [v for v in verdicts if not v["keep"]] + outcome.verdicts
        kept = rule_kept
        if mode != "rules":
            kept = self._publish_once(f"{prefix}-{mode}-kept.jsonl", dumps_jsonl(kept_records + extra))
        dropped = await self._record_critique(inp, mode, kept, kept_records + extra, verdicts, {"kept": kept, **outputs})
        return CritiqueOutput(
            kept=kept,
            critiques=outputs.get("critiques") or rule_critiques,
            kept_count=len({r["id"] for r in kept_records}),
            dropped_count=sum(dropped.values()),
            dropped=dict(sorted(dropped.items())),
            extra_count=len(extra),
            parsing=parsing,
        )

    @activity.defn
    async def critique_solutions(self, inp: CritiqueInput) -> CritiqueOutput:
        """An answer kind's model-based critique (judge, cft, rubric) of its verified solutions, the
        rationale and RFT candidates (`inp.examples`), after the reasoning steps. Candidates that are
        not solutions (cft records) pass unread. Kept: the solutions the mode keeps (rubric: revised
        where the revision reaches the same answer), then the critique records (cft)."""
        task = self._task(inp.task_ref)
        mode = task.critique.mode
        if not critique_modes.critiques_solutions(task) or mode == "rules":
            raise ApplicationError(f"critique.mode {mode} of a {task.kind} task reads no solutions", type="INVALID_ARGUMENT", non_retryable=True)
        candidates = self._read_jsonl(inp.examples)
        solutions = [r for r in candidates if r.get("category") in reasoning.SOLUTION_CATEGORIES]
        others = [r for r in candidates if r.get("category") not in reasoning.SOLUTION_CATEGORIES]
        prefix = output_key(inp.job_id, inp.round, "critique-solutions", [inp.examples], {"mode": mode})
        outcome, critiques, parsing = await self._model_critique(task, inp, solutions, prefix)
        kept = self._publish_once(f"{prefix}-kept.jsonl", dumps_jsonl(others + outcome.kept + outcome.extra))
        dropped = await self._record_critique(
            inp, mode, kept, outcome.kept + outcome.extra, outcome.verdicts, {"solutions-kept": kept, "solution-critiques": critiques}
        )
        return CritiqueOutput(
            kept=kept,
            critiques=critiques,
            kept_count=len(others) + len(outcome.kept),
            dropped_count=sum(dropped.values()),
            dropped=dict(sorted(dropped.items())),
            extra_count=len(outcome.extra),
            parsing=parsing,
        )

    @activity.defn
    async def reason_examples(self, inp: ReasonInput) -> ReasonOutput:
        """TeacherService.Generate in RATIONALES or REJECTION_SAMPLING mode on the seeds and the kept
        examples: rationales whose final answer is not the example's label are dropped (Fine-tune-CoT),
        RFT keeps verified samples on distinct reasoning paths. The kept ones join the candidates as
        rationale-task records (`syllabus.prompts.rationale_prompt`)."""
        task = self._task(inp.task_ref)
        spec = task.generate.mode(inp.mode)
        if spec is None:
            raise ApplicationError(f"generate mode {inp.mode} is off", type="INVALID_ARGUMENT", non_retryable=True)
        candidates = self._read_jsonl(inp.candidates) if inp.candidates is not None else []
        seeds = self._read_jsonl(inp.seeds)
        if inp.mode == "rft":  # RFT verifies against a gold answer: the questions that have one
            seeds, candidates = [s for s in seeds if s["label"]], [c for c in candidates if c.get("label")]
        questions = reasoning.questions(seeds, candidates, scaled(spec.max_questions, inp.budget_scale))
        q_ref = self._publish_once(
            output_key(inp.job_id, inp.round, f"{inp.mode}-questions", [], {"ids": [q["id"] for q in questions]}, "jsonl"),
            dumps_jsonl(questions),
        )
        sampling = reasoning_sampling(task, inp.mode, inp.round, inp.teacher_adapter)
        params = {"model": task.teacher.model, "teacher_adapter": inp.teacher_adapter.sha256 if inp.teacher_adapter else None,
                  "spec": spec.model_dump(), "labels": task.labels, "instructions": task.instructions}  # fmt: skip
        key = output_key(inp.job_id, inp.round, inp.mode, [q_ref], params, "jsonl")
        if inp.mode == "rationales":
            mode = {"mode": teacher_pb2.GENERATE_MODE_RATIONALES, "styles": spec.styles, "per_style": spec.per_style,
                    "retries": spec.retries}  # fmt: skip
        else:
            mode = {"mode": teacher_pb2.GENERATE_MODE_REJECTION_SAMPLING, "styles": [spec.style], "rejection_k": spec.k,
                    "verifier": task.kind_spec.verifier}  # fmt: skip
        request = teacher_pb2.GenerateRequest(
            model=_teacher_ref(task, inp.teacher_adapter),
            kind=task_kind(task.kind),
            instructions=task.kind_spec.teacher_instructions(task.instructions, task.labels),
            labels=task.labels,
            questions=ref_to_pb(q_ref),
            sampling=common_pb2.SamplingParams(**sampling),
            batch_size=task.generate.batch_size,
            output_key=key,
            round=inp.round,
            **mode,
        )
        stats: dict = {}

        async def call() -> ArtifactRef | None:
            nonlocal stats
            response = await self._teacher(lambda t: t.generate(request))
            stats = {"failed": response.failed, "sampled": response.sampled, "incorrect": response.incorrect,
                     "duplicate_paths": response.duplicate_paths, "unparsable": response.unparsable}  # fmt: skip
            return ref_from_pb(response.examples)

        written = await self.published_or_call(key, call, f"TeacherService.Generate ({inp.mode})")
        if not stats and (st := self.store.stat(generate_stats_key(key))):
            stats = json.loads(self._read(st))
        outcome = reasoning.training_records(task, inp.mode, questions, self._read_jsonl(written), stats)
        # Questions still without an answer (the answer kinds' generated ones) are not candidates.
        merged = [c for c in candidates if c.get("label")] + outcome.records
        out = self._publish_once(
            output_key(inp.job_id, inp.round, f"{inp.mode}-candidates", [inp.candidates, written], {}, "jsonl"), dumps_jsonl(merged)
        )
        await self._db(self.metadata.record_samples, [sample_row(inp.job_id, inp.round, inp.mode, r, out.uri) for r in outcome.records])
        await self._record_artifacts(inp.job_id, inp.round, {inp.mode: written, f"candidates-{inp.mode}": out})
        return ReasonOutput(candidates=out, count=len(merged), counts=outcome.counts)

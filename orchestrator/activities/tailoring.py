"""The ARTE steps of `orchestrator.tailoring`: each calls one service (the DPO run through
`TrainerActivities._train`, watched like the student's)."""

from __future__ import annotations

from temporalio import activity
from temporalio.exceptions import ApplicationError

from orchestrator.activities.trainer import TrainerActivities
from orchestrator.keys import output_key
from orchestrator.scores import crowd_rows
from orchestrator.tailoring import (
    CrowdInput,
    CrowdOutput,
    DpoInput,
    DpoOutput,
    DraftInput,
    DraftOutput,
    PairsInput,
    PairsOutput,
    PreferenceInput,
    PreferenceOutput,
)
from syllabus.artifacts import ArtifactRef
from syllabus.pb import answer_match, ref_from_pb, ref_to_pb, task_kind
from syllabus.records import dumps_jsonl
from syllabus_sdk.common.v1 import common_pb2
from syllabus_sdk.student.v1 import student_pb2
from syllabus_sdk.teacher.v1 import teacher_pb2
from syllabus_sdk.trainer.v1 import trainer_pb2


class TailoringActivities(TrainerActivities):
    """The ARTE steps: each calls one service. Store, task specs and unary calls come from the
    loop's `Activities` (one artifact store and one error mapping for the whole orchestrator)."""



    @activity.defn
    async def draft_rationales(self, inp: DraftInput) -> DraftOutput:
        """TeacherService.Generate (rationales mode): one rationale per (question, style); writes
        Tailor's drafts and the student's one-shot demonstrations (answer first, so the student's
        greedy answer starts with the label it copies)."""

        task = self._task(inp.task_ref)
        s = inp.settings
        if len(s.styles) < 2:
            raise ApplicationError(
                "ARTE needs at least two styles to compare", type="INVALID_ARGUMENT", non_retryable=True
            )
        sampling = {
            "temperature": s.draft_temperature,
            "max_new_tokens": s.draft_max_new_tokens,
            "seed": s.seed + inp.round,
        }
        params = {
            "model": task.teacher.model,
            "instructions": task.instructions,
            "styles": s.styles,
            "sampling": sampling,
        }
        key = output_key(
            inp.job_id, inp.round, "arte-rationales", [inp.questions, inp.teacher_adapter], params, "jsonl"
        )
        rationales = self.store.stat(key)
        if rationales is None:
            model = common_pb2.ModelRef(base=task.teacher.model, adapter=ref_to_pb(inp.teacher_adapter))
            request = teacher_pb2.GenerateRequest(
                model=model, kind=task_kind(task.kind), instructions=task.instructions,
                mode=teacher_pb2.GENERATE_MODE_RATIONALES, questions=ref_to_pb(inp.questions), styles=s.styles,
                sampling=common_pb2.SamplingParams(**sampling), output_key=key, round=inp.round,
            )  # fmt: skip
            response = await self._teacher(lambda t: t.generate(request))
            rationales = ref_from_pb(response.examples)
            if rationales is None:
                raise ApplicationError("TeacherService.Generate returned no rationales", type="DATA_LOSS")
        questions = {}
        for q in self._read_jsonl(inp.questions):
            text = q.get("input") or q.get("question")
            questions[str(q.get("id"))] = q | {"text": text, "gold": str(q.get("label", q.get("answer", "")))}
        drafts, demos, failed = [], [], 0
        for r in self._read_jsonl(rationales):
            q = questions.get(str(r.get("question_id")))
            # A reply without an "Answer:" line is still a rationale to show the student (the gold
            # answer goes first in the demonstration); only an empty one has nothing to prefer.
            rationale = r.get("rationale") if r.get("status") == "ok" else str(r.get("raw", "")).strip()
            if q is None or not rationale:
                continue
            failed += r.get("status") != "ok"
            draft = {"id": r["id"], "question_id": r["question_id"], "question": q["text"], "style": r.get("style"),
                     "rationale": rationale, "answer": q["gold"]}  # fmt: skip
            if q.get("prompt") and q.get("completion"):  # a generated question: question-level pairs
                draft |= {"prompt": q["prompt"], "completion": q["completion"], "group": q.get("group", "")}
            drafts.append(draft)
            demos.append({"id": r["id"], "question_id": r["question_id"], "prompt": task.prompt_for(q["text"]),
                          "response": f"{q['gold']}\n{rationale.strip()}"})  # fmt: skip
        if not drafts:
            raise ApplicationError(
                "the teacher wrote no rationale: nothing for the student to score",
                type="FAILED_PRECONDITION",
                non_retryable=True,
            )
        drafts_ref = self._publish_once(key.removesuffix(".jsonl") + "-drafts.jsonl", dumps_jsonl(drafts))
        demos_ref = self._publish_once(key.removesuffix(".jsonl") + "-demos.jsonl", dumps_jsonl(demos))
        await self._record_artifacts(inp.job_id, inp.round, {"arte-drafts": drafts_ref})
        return DraftOutput(drafts=drafts_ref, demos=demos_ref, rationales=len(drafts), failed=failed)

    @activity.defn
    async def score_preference(self, inp: PreferenceInput) -> PreferenceOutput:
        """StudentService.Score (METRIC_ARTE_PREFERENCE): s_r per demonstration on Dpref."""

        task = self._task(inp.task_ref)
        s = inp.settings
        params = {"model": task.student.model, "match": task.kind_spec.eval_match, "max_new_tokens": s.probe_max_new_tokens,
                  "probe_k": s.probe_k}  # fmt: skip
        inputs = [inp.demos, inp.probe_set, inp.student_adapter, inp.probe_responses]
        key = output_key(inp.job_id, inp.round, "arte-preference", inputs, params, "jsonl")
        scores = self.store.stat(key)
        if scores is None:
            model = common_pb2.ModelRef(base=task.student.model, adapter=ref_to_pb(inp.student_adapter))
            request = student_pb2.ScoreRequest(
                model=model, dataset=ref_to_pb(inp.demos), metrics=[student_pb2.METRIC_ARTE_PREFERENCE],
                arte=student_pb2.ArteSettings(probe_set=ref_to_pb(inp.probe_set), match=answer_match(task.kind_spec.eval_match),
                                              max_new_tokens=s.probe_max_new_tokens, probe_k=s.probe_k,
                                              probe_responses=ref_to_pb(inp.probe_responses)),
                output_key=key,
            )  # fmt: skip
            response = await self._student(lambda st: st.score(request))
            scores = ref_from_pb(response.scores)
            if scores is None:
                raise ApplicationError("StudentService.Score returned no scores", type="DATA_LOSS")
        await self._record_artifacts(inp.job_id, inp.round, {"arte-scores": scores})
        return PreferenceOutput(scores=scores, count=len(self._read_jsonl(scores)))

    @activity.defn
    async def crowd_responses(self, inp: CrowdInput) -> CrowdOutput:
        """The crowd's right/wrong on the validation bank as ArteSettings.probe_responses rows."""
        rows = crowd_rows([self._read_jsonl(p) for p in inp.predictions])
        key = output_key(inp.job_id, inp.round, "arte-crowd", list(inp.predictions), {}, "jsonl")
        return CrowdOutput(responses=self._publish_once(key, dumps_jsonl(rows)), members=len(inp.predictions))

    @activity.defn
    async def build_pairs(self, inp: PairsInput) -> PairsOutput:
        """TeacherService.Tailor: the question- and rationale-level DPO pairs."""

        task = self._task(inp.task_ref)
        key = output_key(
            inp.job_id, inp.round, "arte-pairs", [inp.drafts, inp.scores], {"instructions": task.instructions}, "jsonl"
        )
        request = teacher_pb2.TailorRequest(
            instructions=task.instructions, drafts=ref_to_pb(inp.drafts), scores=ref_to_pb(inp.scores), output_key=key
        )
        # No "output exists?" shortcut: the counts come with the response, and a retried Tailor
        # returns the published pairs without rebuilding them.
        try:
            response = await self._teacher(lambda t: t.tailor(request))
        except ApplicationError as e:
            if e.type != "FAILED_PRECONDITION":
                raise
            # Every rationale helped the student alike (e.g. a student that answers nothing right
            # yet): there is no preference to align to, which is an outcome, not a failure.
            activity.logger.warning("ARTE round %d: %s", inp.round, e.message)
            return PairsOutput(pairs=None, question_pairs=0, rationale_pairs=0, skipped=e.message)
        pairs = ref_from_pb(response.pairs)
        if pairs is None:
            raise ApplicationError("TeacherService.Tailor returned no pairs", type="DATA_LOSS")
        await self._record_artifacts(inp.job_id, inp.round, {"arte-pairs": pairs})
        return PairsOutput(
            pairs=pairs, question_pairs=response.question_pairs, rationale_pairs=response.rationale_pairs
        )

    @activity.defn
    async def train_teacher_dpo(self, inp: DpoInput) -> DpoOutput:
        """TrainerService.StartTraining (OBJECTIVE_DPO) on the teacher + WatchTraining to completion.

        The same re-attach semantics as `Activities.train_adapter`: the job key is the output key, so
        a retry re-attaches to the running job, resumes a killed one, or (adapter and metrics
        published) answers from the store without a call. Cancelling the activity cancels the job.
        """
        task = self._task(inp.task_ref)
        s = inp.settings
        if task.teacher.model.startswith(("openai:", "vllm:")):
            raise ApplicationError(
                f"DPO trains a LoRA on the teacher: {task.teacher.model} is an endpoint, not weights",
                type="INVALID_ARGUMENT",
                non_retryable=True,
            )
        lora = {"rank": s.lora_rank, "alpha": s.lora_alpha, "target_modules": s.target_modules}
        training = {"epochs": s.epochs, "learning_rate": s.learning_rate, "batch_size": s.batch_size,
                    "seed": s.seed, "max_seq_len": s.max_seq_len}  # fmt: skip
        params = {"model": task.teacher.model, "objective": "dpo", "beta": s.beta, "lora": lora, "training": training}
        key = output_key(inp.job_id, inp.round, "arte-dpo", [inp.pairs, inp.teacher_adapter], params, "tar")
        model = common_pb2.ModelRef(base=task.teacher.model, adapter=ref_to_pb(inp.teacher_adapter))
        request = trainer_pb2.StartTrainingRequest(
            job_key=key, model=model, dataset=ref_to_pb(inp.pairs), lora=trainer_pb2.LoraSpec(**lora),
            training=trainer_pb2.TrainingSpec(**training), output_key=key, objective=trainer_pb2.OBJECTIVE_DPO,
            dpo=trainer_pb2.DpoSpec(beta=s.beta),
        )  # fmt: skip
        adapter, metrics = await self._train(request, "TrainerService DPO training")
        return await self._dpo_done(inp, adapter, metrics)

    async def _dpo_done(self, inp: DpoInput, adapter: ArtifactRef, metrics: dict) -> DpoOutput:
        await self._record_artifacts(inp.job_id, inp.round, {"adapter-teacher-dpo": adapter})
        return DpoOutput(adapter=adapter, steps=int(metrics["steps"]), mean_loss=float(metrics["mean_loss"]))

"""TailorTeacherWorkflow: ARTE (arXiv 2406.19227) as orchestrated steps, a child workflow of the loop.

    drafts (teacher Generate, rationales mode)
        -> the crowd's answers on the validation bank (student Evaluate: the base student and each
           round's adapter so far) -> Dpref = the probe_k most discriminative items under 2PL IRT
        -> preference on Dpref (student Score, METRIC_ARTE_PREFERENCE, graded against the gold answers)
        -> question- and rationale-level pairs (teacher Tailor)
        -> DPO on the teacher (trainer StartTraining, OBJECTIVE_DPO) -> the teacher adapter

The paper fits its 2PL model on several small models' correctness; here the crowd is the student
itself at its base and at every round's adapter (the checkpoints the loop has, no extra model to
load). With no adapter yet (a crowd of one, which never happens in the loop: it tailors after a
round) there is nothing to fit and Dpref is the bank's first probe_k items.

The services never call each other: each step is one activity in `orchestrator.tailoring_activities`
that calls one service, and data moves between them as `ArtifactRef`s. The aligned teacher is the
task's teacher base plus the returned adapter (`ModelRef.adapter`); regenerating with it is a plain
Generate call of the caller's next step.

Run it as a child workflow (`workflow.execute_child_workflow(TailorTeacherWorkflow.run, inp)`) or on
its own; `orchestrator.worker` registers it and its activities.

The activities live here too (one module per flow); they call the services through the loop's
`Activities` (typed clients, one error mapping, `_train` for a watched training run).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.exceptions import ApplicationError

# The main loop's timeouts and retry policy: transient failures retry for about 5 minutes, bad input fails at once.
from orchestrator.policies import RETRY, START_TO_CLOSE

with workflow.unsafe.imports_passed_through():
    from orchestrator.activities import Activities
    from orchestrator.keys import output_key
    from orchestrator.scores import crowd_rows, crowd_stage
    from orchestrator.types import ArteSettings, EvaluateInput
    from syllabus.artifacts import ArtifactRef
    from syllabus.pb import answer_match, ref_from_pb, ref_to_pb, task_kind
    from syllabus.records import dumps_jsonl
    from syllabus_sdk.common.v1 import common_pb2
    from syllabus_sdk.student.v1 import student_pb2
    from syllabus_sdk.teacher.v1 import teacher_pb2
    from syllabus_sdk.trainer.v1 import trainer_pb2



@dataclass
class TailorTeacherInput:
    """Input of TailorTeacherWorkflow."""

    job_id: str
    # The task spec (teacher, student, instructions, labels, kind).
    task_ref: ArtifactRef
    round: int
    # Draft questions: JSONL with "id", "input" (or "question"), the gold "label" (or "answer"), and
    # optionally "prompt" + "completion" (the generation prompt and the teacher's reply that made the
    # question; with them Tailor also builds question-level pairs).
    questions: ArtifactRef
    # The validation bank Dpref is chosen from: JSONL with "id", "prompt" (the student's prompt) and
    # "answer" (gold). Never the eval split.
    probe_set: ArtifactRef
    # The current student (base = the task's student model); None: the base student.
    student_adapter: ArtifactRef | None = None
    # The teacher to align (base = the task's teacher model); None: the base teacher.
    teacher_adapter: ArtifactRef | None = None
    settings: ArteSettings = field(default_factory=ArteSettings)
    heartbeat_timeout_s: float = 120.0
    # The validation split (eval-set JSONL: "id", "input", "label", "prompt") the crowd answers,
    # the bank's items by id; None: no 2PL selection.
    validation: ArtifactRef | None = None
    # The IRT crowd beside the base student: the student's adapters so far (each round's).
    crowd: list[ArtifactRef] = field(default_factory=list)


@dataclass
class CrowdInput:
    job_id: str
    round: int
    # Each crowd member's predictions on the validation split ("id", "correct"), the base first.
    predictions: list[ArtifactRef]


@dataclass
class CrowdOutput:
    # ArteSettings.probe_responses: "item_id", "subject", "correct" per member and item.
    responses: ArtifactRef
    members: int


@dataclass
class DraftInput:
    job_id: str
    task_ref: ArtifactRef
    round: int
    questions: ArtifactRef
    teacher_adapter: ArtifactRef | None
    settings: ArteSettings


@dataclass
class DraftOutput:
    # Tailor's drafts: one record per rationale ("id", "question_id", "question", "rationale",
    # "answer", optional "prompt" + "completion").
    drafts: ArtifactRef
    # The student's demonstrations, one per draft: "id", "question_id", "prompt", "response".
    demos: ArtifactRef
    rationales: int
    # Of `rationales`, replies without an "Answer:" line (kept: the raw reply is the rationale).
    failed: int


@dataclass
class PreferenceInput:
    job_id: str
    task_ref: ArtifactRef
    round: int
    demos: ArtifactRef
    probe_set: ArtifactRef
    student_adapter: ArtifactRef | None
    settings: ArteSettings
    # The crowd's answers on the bank: Dpref = the probe_k most discriminative items (2PL); None:
    # the bank's first probe_k items.
    probe_responses: ArtifactRef | None = None


@dataclass
class PreferenceOutput:
    # Rows "id", "question_id", "arte_s_r", "arte_s_q".
    scores: ArtifactRef
    count: int


@dataclass
class PairsInput:
    job_id: str
    task_ref: ArtifactRef
    round: int
    drafts: ArtifactRef
    scores: ArtifactRef


@dataclass
class PairsOutput:
    # DPO records "prompt", "chosen", "rejected", "level", "margin", "question_id"; None: no pair.
    pairs: ArtifactRef | None
    question_pairs: int
    rationale_pairs: int
    skipped: str = ""  # why there is no pair (the teacher's FAILED_PRECONDITION message)


@dataclass
class DpoInput:
    job_id: str
    task_ref: ArtifactRef
    round: int
    pairs: ArtifactRef
    teacher_adapter: ArtifactRef | None
    settings: ArteSettings


@dataclass
class DpoOutput:
    adapter: ArtifactRef
    steps: int
    mean_loss: float


@dataclass
class TailorTeacherOutput:
    """The aligned teacher (the task's teacher base + `adapter`) and what each step produced. With no
    preference pair to train on, `adapter` is the teacher given (None: the base) and `skipped` says why."""

    adapter: ArtifactRef | None
    pairs: ArtifactRef | None
    question_pairs: int
    rationale_pairs: int
    drafts: ArtifactRef
    scores: ArtifactRef
    dpo_steps: int
    dpo_mean_loss: float
    skipped: str = ""


class TailoringActivities:
    """The ARTE steps: each calls one service. Store, task specs and unary calls come from the
    loop's `Activities` (one artifact store and one error mapping for the whole orchestrator)."""

    def __init__(self, base: Activities) -> None:
        self.base = base

    @property
    def config(self):
        return self.base.config

    @activity.defn
    async def draft_rationales(self, inp: DraftInput) -> DraftOutput:
        """TeacherService.Generate (rationales mode): one rationale per (question, style); writes
        Tailor's drafts and the student's one-shot demonstrations (answer first, so the student's
        greedy answer starts with the label it copies)."""

        task = self.base._task(inp.task_ref)
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
        rationales = self.base.store.stat(key)
        if rationales is None:
            model = common_pb2.ModelRef(base=task.teacher.model, adapter=ref_to_pb(inp.teacher_adapter))
            request = teacher_pb2.GenerateRequest(
                model=model, kind=task_kind(task.kind), instructions=task.instructions,
                mode=teacher_pb2.GENERATE_MODE_RATIONALES, questions=ref_to_pb(inp.questions), styles=s.styles,
                sampling=common_pb2.SamplingParams(**sampling), output_key=key, round=inp.round,
            )  # fmt: skip
            response = await self.base._teacher(lambda t: t.generate(request))
            rationales = ref_from_pb(response.examples)
            if rationales is None:
                raise ApplicationError("TeacherService.Generate returned no rationales", type="DATA_LOSS")
        questions = {}
        for q in self.base._read_jsonl(inp.questions):
            text = q.get("input") or q.get("question")
            questions[str(q.get("id"))] = q | {"text": text, "gold": str(q.get("label", q.get("answer", "")))}
        drafts, demos, failed = [], [], 0
        for r in self.base._read_jsonl(rationales):
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
        drafts_ref = self.base._publish_once(key.removesuffix(".jsonl") + "-drafts.jsonl", dumps_jsonl(drafts))
        demos_ref = self.base._publish_once(key.removesuffix(".jsonl") + "-demos.jsonl", dumps_jsonl(demos))
        await self.base._record_artifacts(inp.job_id, inp.round, {"arte-drafts": drafts_ref})
        return DraftOutput(drafts=drafts_ref, demos=demos_ref, rationales=len(drafts), failed=failed)

    @activity.defn
    async def score_preference(self, inp: PreferenceInput) -> PreferenceOutput:
        """StudentService.Score (METRIC_ARTE_PREFERENCE): s_r per demonstration on Dpref."""

        task = self.base._task(inp.task_ref)
        s = inp.settings
        params = {"model": task.student.model, "match": task.kind_spec.eval_match, "max_new_tokens": s.probe_max_new_tokens,
                  "probe_k": s.probe_k}  # fmt: skip
        inputs = [inp.demos, inp.probe_set, inp.student_adapter, inp.probe_responses]
        key = output_key(inp.job_id, inp.round, "arte-preference", inputs, params, "jsonl")
        scores = self.base.store.stat(key)
        if scores is None:
            model = common_pb2.ModelRef(base=task.student.model, adapter=ref_to_pb(inp.student_adapter))
            request = student_pb2.ScoreRequest(
                model=model, dataset=ref_to_pb(inp.demos), metrics=[student_pb2.METRIC_ARTE_PREFERENCE],
                arte=student_pb2.ArteSettings(probe_set=ref_to_pb(inp.probe_set), match=answer_match(task.kind_spec.eval_match),
                                              max_new_tokens=s.probe_max_new_tokens, probe_k=s.probe_k,
                                              probe_responses=ref_to_pb(inp.probe_responses)),
                output_key=key,
            )  # fmt: skip
            response = await self.base._student(lambda st: st.score(request))
            scores = ref_from_pb(response.scores)
            if scores is None:
                raise ApplicationError("StudentService.Score returned no scores", type="DATA_LOSS")
        await self.base._record_artifacts(inp.job_id, inp.round, {"arte-scores": scores})
        return PreferenceOutput(scores=scores, count=len(self.base._read_jsonl(scores)))

    @activity.defn
    async def crowd_responses(self, inp: CrowdInput) -> CrowdOutput:
        """The crowd's right/wrong on the validation bank as ArteSettings.probe_responses rows."""
        rows = crowd_rows([self.base._read_jsonl(p) for p in inp.predictions])
        key = output_key(inp.job_id, inp.round, "arte-crowd", list(inp.predictions), {}, "jsonl")
        return CrowdOutput(responses=self.base._publish_once(key, dumps_jsonl(rows)), members=len(inp.predictions))

    @activity.defn
    async def build_pairs(self, inp: PairsInput) -> PairsOutput:
        """TeacherService.Tailor: the question- and rationale-level DPO pairs."""

        task = self.base._task(inp.task_ref)
        key = output_key(
            inp.job_id, inp.round, "arte-pairs", [inp.drafts, inp.scores], {"instructions": task.instructions}, "jsonl"
        )
        request = teacher_pb2.TailorRequest(
            instructions=task.instructions, drafts=ref_to_pb(inp.drafts), scores=ref_to_pb(inp.scores), output_key=key
        )
        # No "output exists?" shortcut: the counts come with the response, and a retried Tailor
        # returns the published pairs without rebuilding them.
        try:
            response = await self.base._teacher(lambda t: t.tailor(request))
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
        await self.base._record_artifacts(inp.job_id, inp.round, {"arte-pairs": pairs})
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
        task = self.base._task(inp.task_ref)
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
        adapter, metrics = await self.base._train(request, "TrainerService DPO training")
        return await self._dpo_done(inp, adapter, metrics)

    async def _dpo_done(self, inp: DpoInput, adapter: ArtifactRef, metrics: dict) -> DpoOutput:
        await self.base._record_artifacts(inp.job_id, inp.round, {"adapter-teacher-dpo": adapter})
        return DpoOutput(adapter=adapter, steps=int(metrics["steps"]), mean_loss=float(metrics["mean_loss"]))

    def all(self) -> list:
        """The activity callables to register on a worker."""
        return [self.draft_rationales, self.crowd_responses, self.score_preference, self.build_pairs, self.train_teacher_dpo]



@workflow.defn
class TailorTeacherWorkflow:
    """Align the task's teacher to the current student (ARTE); returns the teacher adapter."""

    @workflow.run
    async def run(self, inp: TailorTeacherInput) -> TailorTeacherOutput:
        s = inp.settings
        opts = {
            "start_to_close_timeout": START_TO_CLOSE,
            "heartbeat_timeout": timedelta(seconds=inp.heartbeat_timeout_s),
            "retry_policy": RETRY,
        }
        drafted = await workflow.execute_activity_method(
            TailoringActivities.draft_rationales,
            DraftInput(inp.job_id, inp.task_ref, inp.round, inp.questions, inp.teacher_adapter, s),
            **opts,
        )
        responses = None
        if inp.validation is not None and inp.crowd:
            members = [None, *inp.crowd]  # the base student, then each round's adapter
            answered = []
            for m in members:
                answered.append(
                    await workflow.execute_activity_method(
                        Activities.evaluate_student,
                        EvaluateInput(inp.job_id, inp.task_ref, inp.round, crowd_stage(m), inp.validation, adapter=m),
                        **opts,
                    )
                )
            crowd = await workflow.execute_activity_method(
                TailoringActivities.crowd_responses,
                CrowdInput(inp.job_id, inp.round, [a.predictions for a in answered]),
                **opts,
            )
            responses = crowd.responses
        preference = await workflow.execute_activity_method(
            TailoringActivities.score_preference,
            PreferenceInput(inp.job_id, inp.task_ref, inp.round, drafted.demos, inp.probe_set, inp.student_adapter, s,
                            responses),
            **opts,
        )
        pairs = await workflow.execute_activity_method(
            TailoringActivities.build_pairs,
            PairsInput(inp.job_id, inp.task_ref, inp.round, drafted.drafts, preference.scores),
            **opts,
        )
        if pairs.pairs is None:
            return TailorTeacherOutput(
                adapter=inp.teacher_adapter, pairs=None, question_pairs=0, rationale_pairs=0, drafts=drafted.drafts,
                scores=preference.scores, dpo_steps=0, dpo_mean_loss=0.0, skipped=pairs.skipped,
            )  # fmt: skip
        dpo = await workflow.execute_activity_method(
            TailoringActivities.train_teacher_dpo,
            DpoInput(inp.job_id, inp.task_ref, inp.round, pairs.pairs, inp.teacher_adapter, s),
            **opts,
        )
        return TailorTeacherOutput(
            adapter=dpo.adapter,
            pairs=pairs.pairs,
            question_pairs=pairs.question_pairs,
            rationale_pairs=pairs.rationale_pairs,
            drafts=drafted.drafts,
            scores=preference.scores,
            dpo_steps=dpo.steps,
            dpo_mean_loss=dpo.mean_loss,
        )

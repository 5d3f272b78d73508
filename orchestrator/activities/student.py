"""Steps the StudentService computes: evaluate (and the round's row) and the round's scores."""

from __future__ import annotations

import math
import random
from collections import Counter

from temporalio import activity
from temporalio.exceptions import ApplicationError

from orchestrator.activities.base import ActivityBase, finite
from orchestrator.activity_io import (
    EvaluateInput,
    EvaluateOutput,
    SampleInput,
    SampleOutput,
    ScoreInput,
    ScoreOutput,
    SelectInput,
    SelectOutput,
)
from orchestrator.budget import car_by_method, method_rewards
from orchestrator.keys import job_prefix, output_key
from orchestrator.scores import (
    AGREEMENT_STAGE,
    STUDENT_METRICS,
    add_percentiles,
    agreement_margin,
    compatibility,
    crowd_rows,
    crowd_stage,
    difficulty_columns,
    heldout_records,
    reflection_versions,
    reward_gap,
    scoring_records,
    weighted_mix,
)
from syllabus.artifacts import ArtifactRef
from syllabus.pb import answer_match, ref_from_pb, ref_to_pb, task_kind
from syllabus.records import dumps_jsonl
from syllabus.selection import ranked, top_count, top_fraction
from syllabus.tasks import METRIC_COLUMNS, TEACHER_KEY
from syllabus_sdk.common.v1 import common_pb2
from syllabus_sdk.student.v1 import student_pb2


class StudentActivities(ActivityBase):
    @activity.defn
    async def sample_student(self, inp: SampleInput) -> SampleOutput:
        """StudentService.Sample: the current student's own completions of the training set's prompts
        (an opd chunk); held-out records are left out. Seeded by round and chunk: a retry, or the
        service answering from the store, gives the same samples."""
        task = self._task(inp.task_ref)
        spec = task.train.recipe.stages[0].on_policy
        records = [r for r in self._read_jsonl(inp.dataset) if not r.get("heldout")]
        prompts = self._publish_once(
            output_key(inp.job_id, inp.round, f"opd-prompts-{inp.chunk + 1}", [inp.dataset], {}, "jsonl"),
            dumps_jsonl([{k: r[k] for k in ("id", "prompt", "category") if k in r} for r in records]),
        )
        sampling = {"temperature": spec.temperature, "top_p": 1.0, "max_new_tokens": spec.max_new_tokens,
                    "n": spec.samples_per_prompt, "seed": task.train.seed + 1000 * inp.round + inp.chunk}  # fmt: skip
        key = output_key(inp.job_id, inp.round, f"opd-samples-{inp.chunk + 1}", [prompts, inp.adapter], sampling, "jsonl")
        request = student_pb2.SampleRequest(
            model=common_pb2.ModelRef(base=task.student.model, adapter=ref_to_pb(inp.adapter)),
            dataset=ref_to_pb(prompts), sampling=common_pb2.SamplingParams(**sampling), output_key=key,
        )  # fmt: skip

        async def call() -> ArtifactRef | None:
            return ref_from_pb((await self._student(lambda s: s.sample(request))).samples)

        samples = await self.published_or_call(key, call, "StudentService.Sample")
        await self._record_artifacts(inp.job_id, inp.round, {f"opd-samples-{inp.chunk + 1}": samples})
        return SampleOutput(samples, len(self._read_jsonl(samples)))

    @activity.defn
    async def evaluate_student(self, inp: EvaluateInput) -> EvaluateOutput:
        """StudentService.Evaluate on the eval set; records the evaluation, and the round's row when
        `round_counts` is given (a round's final evaluation)."""
        task = self._task(inp.task_ref)
        params = {"model": task.student.model, "kind": task.kind, "labels": task.labels}
        generates = task.kind_spec.reasons  # the answer kinds: greedy answers, then matched
        if generates:
            params["max_new_tokens"] = task.evaluate.max_new_tokens
        key = output_key(inp.job_id, inp.round, "evaluate", [inp.eval_set, inp.adapter], params, "jsonl")
        request = student_pb2.EvaluateRequest(
            model=common_pb2.ModelRef(base=task.student.model, adapter=ref_to_pb(inp.adapter)),
            kind=task_kind(task.kind),
            eval_set=ref_to_pb(inp.eval_set),
            labels=task.labels,
            output_key=key,
            max_new_tokens=task.evaluate.max_new_tokens if generates else 0,
        )

        async def call() -> ArtifactRef | None:
            return ref_from_pb((await self._student(lambda s: s.evaluate(request))).predictions)

        predictions = await self.published_or_call(key, call, "StudentService.Evaluate")
        records = self._read_jsonl(predictions)
        accuracy, correct, total = await self._record_evaluation(inp, records, predictions)
        adapter_uri = inp.adapter.uri if inp.adapter is not None else ""
        if (c := inp.round_counts) is not None:
            counts = {"generated": c.generated, "kept": c.kept, "selected": c.selected, "trained": c.trained,
                      "leaked": c.leaked, "targeted": c.targeted, "train_loss": c.train_loss}  # fmt: skip
            row = {"job_id": inp.job_id, "round": inp.round, **counts, "accuracy": accuracy, "adapter_uri": adapter_uri}
            await self._db(self.metadata.record_round, row)
        await self._record_artifacts(inp.job_id, inp.round, {f"predictions-{inp.stage}": predictions})
        return EvaluateOutput(accuracy=accuracy, correct=correct, total=total, predictions=predictions)

    async def _score_call(self, key: str, request: student_pb2.ScoreRequest, what: str) -> list[dict]:
        """Rows of a StudentService.Score whose output is `key` (published already, or computed now)."""
        request.output_key = key

        async def call() -> ArtifactRef | None:
            return ref_from_pb((await self._student(lambda s: s.score(request))).scores)

        return self._read_jsonl(await self.published_or_call(key, call, what))

    @activity.defn
    async def score_samples(self, inp: ScoreInput) -> ScoreOutput:
        """StudentService.Score: the task's `score.metrics` on the round's candidates and the seeds
        (and, for a PUDF recipe, the held-out validation items); one scores artifact with every column,
        its percentile rank ("<column>_pct") and the curriculum difficulties; records scores.

        - learnability (LoBaSS): L0 under the current student, Lref under the reference adapter; ifd
          and rifd in the same request, on the current student (`student_metrics_on_base`), so IFD's
          conditional pass is L0's own forward pass;
        - ifd, rifd (without learnability), preference (ARTE s_r on Dpref, the most discriminative
          validation items under 2PL on the crowd of `_probe_crowd`):
          the current student; compatibility = 1 / (1 + car_beta * L), L the base student's loss (as
          CAR's), and with it CAR per generation method (`orchestrator.budget`: reward = the share of
          the method's responses the critique / verification kept, `inp.produced` the denominator);
        - with `score.model`, ifd and rifd on that model instead, with or without learnability
          (Superfiltering: a much smaller scorer ranks nearly as the student does);
        - difficulty: IRT over the artificial crowd of the student's own checkpoints (the base, each
          round's adapter, this round's reference) answering each record's label;
        - agreement: StudentService.Evaluate of the records under `inp.judge` (the seeds' adapter in
          round 1, the current student after): the intended label's log-prob margin over the best other.
        """
        task = self._task(inp.task_ref)
        sc = task.score
        seeds = self._read_jsonl(inp.seeds)
        records = scoring_records(self._read_jsonl(inp.dataset) if inp.dataset else [], seeds)
        heldout = heldout_records(task, self._read_jsonl(inp.heldout)) if inp.heldout is not None else []
        data = self._publish_once(
            output_key(inp.job_id, inp.round, "score-input", [inp.dataset, inp.seeds], {}, "jsonl"), dumps_jsonl(records)
        )
        student = common_pb2.ModelRef(base=task.student.model, adapter=ref_to_pb(inp.student))
        rows: dict[str, dict] = {r["id"]: {"id": r["id"]} for r in records + heldout}
        models: dict[str, str] = {}
        under_student = f"{task.student.model}+{inp.student.uri}" if inp.student else task.student.model

        def merge(scored: list[dict], model: str) -> None:
            for row in scored:
                for col, value in row.items():
                    if col != "id" and row["id"] in rows:
                        rows[row["id"]][col] = value
                        models.setdefault(col, model)

        cars: list = []
        as_is = [m for m in ("ifd", "rifd", "preference", "compatibility") if m in sc.metrics]
        on_scorer = [m for m in ("ifd", "rifd") if m in as_is] if sc.model is not None else []
        as_is = [m for m in as_is if m not in on_scorer]
        if "learnability" in sc.metrics:
            if inp.reference is None:
                raise ApplicationError("learnability needs a reference adapter", type="INVALID_ARGUMENT", non_retryable=True)
            shared = [m for m in ("ifd", "rifd") if m in as_is]  # on the current student, sharing L0's passes
            as_is = [m for m in as_is if m not in shared]
            params = {"model": task.student.model, "with": shared}
            key = output_key(inp.job_id, inp.round, "score-lobass", [data, inp.reference, inp.student], params, "jsonl")
            request = student_pb2.ScoreRequest(
                model=common_pb2.ModelRef(base=task.student.model, adapter=ref_to_pb(inp.reference)),
                dataset=ref_to_pb(data),
                metrics=[student_pb2.METRIC_LOSS_BASE, student_pb2.METRIC_LOSS_REF, student_pb2.METRIC_LEARNABILITY]
                + [STUDENT_METRICS[m] for m in shared],
                base_adapter=ref_to_pb(inp.student),  # L0 under the current student, not the bare base
                student_metrics_on_base=True,
            )
            scored = await self._score_call(key, request, "StudentService.Score (learnability)")
            on_ref = ("loss_ref", "learnability")
            merge([{k: v for k, v in r.items() if k not in on_ref} for r in scored], under_student)
            merge([{k: v for k, v in r.items() if k in (*on_ref, "id")} for r in scored], f"{task.student.model}+{inp.reference.uri}")

        if as_is:
            metrics = [STUDENT_METRICS[m] for m in as_is]
            arte = None
            responses = None
            if "preference" in sc.metrics:
                probe = [{"id": r["id"], "prompt": task.prompt_for(r["input"]), "answer": r["label"]} for r in self._read_jsonl(inp.validation)]
                probe_ref = self._publish_once(job_prefix(inp.job_id) + "/arte-probe.jsonl", dumps_jsonl(probe))
                responses = await self._probe_crowd(inp)
                arte = student_pb2.ArteSettings(
                    probe_set=ref_to_pb(probe_ref), probe_k=sc.probe_k, match=answer_match(task.kind_spec.eval_match),
                    max_new_tokens=sc.probe_max_new_tokens, probe_responses=ref_to_pb(responses),
                )  # fmt: skip
            car_data = data
            if "compatibility" in sc.metrics:  # the service's CAR reads each record's teacher and reward
                reward = method_rewards(records, inp.produced)
                car_data = self._publish_once(
                    output_key(inp.job_id, inp.round, "score-car-input", [data], {"produced": inp.produced}, "jsonl"),
                    # A record of no budgeted method (a seed, a cft critique) has no measured reward: 1.
                    dumps_jsonl({**r, "teacher": r["category"], "reward": reward.get(r["category"], 1.0)} for r in records),
                )
            params = {"model": task.student.model, "metrics": as_is, "score": sc.model_dump()}
            key = output_key(
                inp.job_id, inp.round, "score-student", [car_data, inp.student, inp.validation, responses], params, "jsonl"
            )
            request = student_pb2.ScoreRequest(
                model=student, dataset=ref_to_pb(car_data), metrics=metrics, arte=arte, car_beta=sc.car_beta
            )
            scored = await self._score_call(key, request, "StudentService.Score")
            merge([{k: v for k, v in r.items() if k not in ("question_id", "loss_base")} for r in scored], under_student)
            if "compatibility" in sc.metrics:  # 1 / (1 + beta * L), L under the base student
                merge([{"id": r["id"], "compatibility": compatibility(r.get("loss_base"), sc.car_beta)} for r in scored],
                      task.student.model)  # fmt: skip
                loss = {r["id"]: r.get("loss_base") for r in scored}
                rows_by_method = [{"category": r["category"], "loss_base": loss.get(r["id"], math.nan)} for r in records]
                cars = car_by_method(rows_by_method, {m: n for m, n in inp.produced.items() if not m.startswith(TEACHER_KEY)}, sc.car_beta)
                if task.teachers:  # the same, per teacher of the seed expansion (its records' provenance model)
                    by_teacher = [{"category": TEACHER_KEY + str((r.get("provenance") or {}).get("model")),
                                   "loss_base": loss.get(r["id"], math.nan)} for r in records if r.get("category") == "expand"]  # fmt: skip
                    produced_t = {m: n for m, n in inp.produced.items() if m.startswith(TEACHER_KEY)}
                    cars += car_by_method(by_teacher, produced_t, sc.car_beta)

        if on_scorer:  # the scorer model as it is: no adapter of the student fits it
            scorer = sc.model.model
            key = output_key(inp.job_id, inp.round, "score-scorer", [data], {"model": scorer, "metrics": on_scorer}, "jsonl")
            request = student_pb2.ScoreRequest(
                model=common_pb2.ModelRef(base=scorer), dataset=ref_to_pb(data), metrics=[STUDENT_METRICS[m] for m in on_scorer]
            )
            merge(await self._score_call(key, request, "StudentService.Score (score.model)"), scorer)

        if "difficulty" in sc.metrics:
            label_form = [{"id": r["id"], "prompt": task.prompt_for(r["input"]), "response": r["label"]} for r in records + heldout]
            label_ref = self._publish_once(
                output_key(inp.job_id, inp.round, "score-crowd-input", [data, inp.heldout], {}, "jsonl"), dumps_jsonl(label_form)
            )
            crowd = [a for a in inp.crowd if a is not None]
            params = {"model": task.student.model, "crowd": [a.sha256 for a in crowd]}
            key = output_key(inp.job_id, inp.round, "score-difficulty", [label_ref], params, "jsonl")
            request = student_pb2.ScoreRequest(
                model=common_pb2.ModelRef(base=task.student.model),
                dataset=ref_to_pb(label_ref),
                metrics=[student_pb2.METRIC_IRT_DIFFICULTY],
                irt=student_pb2.IrtSettings(crowd=[ref_to_pb(a) for a in crowd], include_base=True, labels=task.labels),
            )
            scored = await self._score_call(key, request, "StudentService.Score (difficulty)")
            members = len(crowd) + 1  # and the base student
            merge([difficulty_columns(r, members) for r in scored], f"{task.student.model}+crowd:{members}")

        if "agreement" in sc.metrics:
            if inp.judge is None:
                raise ApplicationError("agreement needs a judge adapter", type="INVALID_ARGUMENT", non_retryable=True)
            form = [{"id": r["id"], "input": r["input"], "label": r["label"], "prompt": task.prompt_for(r["input"])} for r in records]
            form_ref = self._publish_once(
                output_key(inp.job_id, inp.round, "score-agreement-input", [data], {}, "jsonl"), dumps_jsonl(form)
            )
            judged = await self.evaluate_student(
                EvaluateInput(inp.job_id, inp.task_ref, inp.round, AGREEMENT_STAGE, form_ref, inp.judge)
            )
            merge([{"id": p["id"], "agreement": agreement_margin(p)} for p in self._read_jsonl(judged.predictions)],
                  f"{task.student.model}+{inp.judge.uri}")  # fmt: skip

        # Percentile ranks are within the round's candidates and seeds; held-out records only need
        # their difficulty (PUDF's probe) and would skew the ranks of those that train.
        held = {r["id"] for r in heldout}
        table = add_percentiles([r for r in rows.values() if r["id"] not in held]) + [r for r in rows.values() if r["id"] in held]
        scores = self._publish_once(
            output_key(inp.job_id, inp.round, "scores", [data, inp.heldout], {"metrics": sc.metrics}, "jsonl"), dumps_jsonl(table)
        )
        sql = [
            {"job_id": inp.job_id, "round": inp.round, "sample_id": r["id"], "metric": col, "value": float(r[col]), "model": model}
            for r in table
            for col, model in models.items()
            # A NaN (e.g. learnability at zero base loss) is kept in the artifact, not in SQL.
            if finite(r.get(col))
        ]
        await self._db(self.metadata.record_scores, sql)
        await self._record_artifacts(inp.job_id, inp.round, {"scores": scores})
        return ScoreOutput(scores=scores, count=len(records), car=cars)

    async def _probe_crowd(self, inp: ScoreInput) -> ArtifactRef | None:
        """ARTE's Dpref for `preference`: the crowd (the base student and `inp.crowd`, the student's
        checkpoints and this round's reference) answers the validation split, and the service keeps
        the probe_k most discriminative items under 2PL. None with a crowd of one (round 1 without a
        reference): nothing to fit, so Dpref is the split's first probe_k items."""
        members = [None, *inp.crowd]
        if len(members) < 2:
            return None
        answered = []
        for m in members:
            ev = await self.evaluate_student(EvaluateInput(inp.job_id, inp.task_ref, inp.round, crowd_stage(m), inp.validation, m))
            answered.append(self._read_jsonl(ev.predictions))
        key = output_key(inp.job_id, inp.round, "score-arte-crowd", [inp.validation, *inp.crowd], {}, "jsonl")
        return self._publish_once(key, dumps_jsonl(crowd_rows(answered)))

    @activity.defn
    async def select_samples(self, inp: SelectInput) -> SelectOutput:
        """Select the candidates that train (the task's `select`), and write the training set: the
        selected candidates by rank, then the seeds, then any held-out records, each carrying its
        score columns and category (what a recipe's stage filters and curricula read).

        top_fraction / top_k / threshold / random rank or sample here (`syllabus.selection`);
        diversity is the StudentService's Select (k-means on the student's embeddings); reflection
        applies the Selective Reflection-Tuning rule through StudentService.Score (METRIC_REFLECTION)."""
        task = self._task(inp.task_ref)
        sel = task.select
        candidates = scoring_records(self._read_jsonl(inp.candidates) if inp.candidates is not None else [], [])
        scores = {r["id"]: r for r in self._read_jsonl(inp.scores)}
        rows = [{**scores.get(r["id"], {}), "id": r["id"]} for r in candidates]
        dropped: Counter[str] = Counter()
        if sel.filters_ifd:
            ifd = task.score.column("ifd")
            kept_rows = [r for r in rows if finite(r.get(ifd)) and r[ifd] <= 1.0]
            dropped["ifd_above_1"] = len(rows) - len(kept_rows)
            rows = kept_rows
        if sel.min_agreement is not None:  # a candidate the seeds' judge reads as another label is dropped
            kept_rows = [r for r in rows if finite(r.get("agreement")) and r["agreement"] >= sel.min_agreement]
            dropped["agreement_below_min"] = len(rows) - len(kept_rows)
            rows = kept_rows
        column = task.score.column(sel.metric)
        if sel.weights:
            mix = weighted_mix(rows, dict(sel.weights), {m: task.score.column(m) for m in METRIC_COLUMNS})
            rows = [{**r, "mix": mix[r["id"]]} for r in rows]
            column = "mix"
        budget = sel.k if sel.k is not None else top_count(len(rows), sel.top_fraction)
        by_id = {r["id"]: r for r in candidates}
        chosen_records: list[dict] | None = None
        if sel.policy == "top_fraction":
            chosen = top_fraction(rows, column, sel.top_fraction, sel.ascending)
        elif sel.policy == "top_k":
            chosen = [str(r["id"]) for r in ranked(rows, column, sel.ascending)[:budget]]
        elif sel.policy == "threshold":
            keep = (lambda v: v <= sel.threshold) if sel.ascending else (lambda v: v >= sel.threshold)
            chosen = [str(r["id"]) for r in ranked(rows, column, sel.ascending) if finite(r.get(column)) and keep(r[column])]
        elif sel.policy == "random":
            ids = sorted(r["id"] for r in rows)
            chosen = random.Random(f"{sel.seed}:{inp.round}").sample(ids, min(len(ids), budget))
        elif sel.policy == "diversity":
            chosen = await self._diversity(inp, task, [by_id[r["id"]] for r in rows], rows, column, budget)
        else:  # reflection
            chosen_records, versions = await self._reflection(inp, task, [by_id[r["id"]] for r in rows])
            chosen = [r["id"] for r in chosen_records]
            dropped.update({f"reflection_chose_{v}": n for v, n in versions.items()})
        dropped["not_selected"] = len(rows) - len(chosen)
        picked = chosen_records or [by_id[i] for i in chosen]
        seeds = scoring_records([], self._read_jsonl(inp.seeds))
        heldout = heldout_records(task, self._read_jsonl(inp.heldout)) if inp.heldout is not None else []
        chosen_ids = {r["id"] for r in picked}
        train = [{**r, **_columns(scores.get(r["id"]))} for r in picked]
        train += [{**s, **_columns(scores.get(s["id"]))} for s in seeds if s["id"] not in chosen_ids]
        train += [{**h, **_columns(scores.get(h["id"]))} for h in heldout]

        params = {"select": sel.model_dump()}
        key = output_key(inp.job_id, inp.round, "select", [inp.candidates, inp.scores, inp.seeds, inp.heldout], params, "jsonl")
        train_set = self._publish_once(key, dumps_jsonl(train))
        await self._db(self.metadata.record_selection, inp.job_id, inp.round, [r["id"] for r in picked])
        await self._record_artifacts(inp.job_id, inp.round, {"train-set": train_set})
        trained = len(train) - len(heldout)
        return SelectOutput(train_set=train_set, selected=len(picked), trained=trained, dropped={k: v for k, v in sorted(dropped.items()) if v})

    async def _diversity(
        self, inp: SelectInput, task, records: list[dict], rows: list[dict], column: str, budget: int
    ) -> list[str]:
        """StudentService.Select, SELECT_POLICY_DIVERSITY (Diversify and Conquer): k-means on the
        current student's embeddings, per-cluster quotas, sampling by the score inside a cluster."""
        sel = task.select
        data = self._publish_once(output_key(inp.job_id, inp.round, "diversity-input", [inp.candidates], {"n": len(records)}, "jsonl"), dumps_jsonl(records))
        # The service samples by exp(score / temperature): a NaN (learnability at zero base loss) ranks last.
        finite_values = [r[column] for r in rows if finite(r.get(column))]
        floor = (max if sel.ascending else min)(finite_values, default=0.0)
        rows = [{**r, column: r[column] if finite(r.get(column)) else floor} for r in rows]
        gap_column = ""
        if sel.reweight is not None and inp.round > 1:
            # Diversify and Conquer reweights from its second iteration on: the gap is measured under
            # the student the earlier rounds trained. A record without the score counts as the mean gap.
            gap_column = "reward_gap"
            gaps = {r["id"]: reward_gap(r, sel.reweight) for r in rows}
            known = [g for g in gaps.values() if g is not None]
            mean = sum(known) / len(known) if known else 0.0
            rows = [{**r, gap_column: mean if gaps[r["id"]] is None else gaps[r["id"]]} for r in rows]
        table = self._publish_once(output_key(inp.job_id, inp.round, "diversity-scores", [inp.scores], {"column": column, "ids": len(rows)}, "jsonl"), dumps_jsonl(rows))
        key = output_key(inp.job_id, inp.round, "diversity", [data, table, inp.student], {"select": sel.model_dump(), "k": budget}, "jsonl")
        request = student_pb2.SelectRequest(
            model=common_pb2.ModelRef(base=task.student.model, adapter=ref_to_pb(inp.student)),
            dataset=ref_to_pb(data), scores=ref_to_pb(table), column=column, policy=student_pb2.SELECT_POLICY_DIVERSITY,
            k=max(1, min(budget, len(records))), ascending=sel.ascending, n_clusters=min(sel.n_clusters, max(1, len(records))),
            quota=student_pb2.QUOTA_MODE_EQUAL if sel.quota == "equal" else student_pb2.QUOTA_MODE_PROPORTIONAL,
            temperature=sel.temperature, seed=sel.seed + inp.round, output_key=key,
            gap_column=gap_column, gap_temperature=sel.reweight_temperature,
        )  # fmt: skip

        async def call() -> ArtifactRef | None:
            return ref_from_pb((await self._student(lambda s: s.select(request))).selected)

        if not records:
            return []
        selected = await self.published_or_call(key, call, "StudentService.Select (diversity)")
        return [r["id"] for r in self._read_jsonl(selected)]

    async def _reflection(self, inp: SelectInput, task, records: list[dict]) -> tuple[list[dict], Counter[str]]:
        """The Selective Reflection-Tuning rule on each reflected candidate: the student's (or
        `score.model`'s) IFD and r-IFD of the four versions (ori, Q*, A*, QA*), in the task's
        `reflection_ratio` form, choose the one that trains."""
        reflected = [r for r in records if isinstance(r.get("reflection"), dict)]
        versions: Counter[str] = Counter()
        if not reflected:
            return records, versions
        four = [reflection_versions(task, r) for r in reflected]
        data = self._publish_once(output_key(inp.job_id, inp.round, "reflection-input", [inp.candidates], {}, "jsonl"), dumps_jsonl(four))
        scorer = task.score.model.model if task.score.model is not None else None
        model = common_pb2.ModelRef(base=scorer) if scorer else common_pb2.ModelRef(base=task.student.model, adapter=ref_to_pb(inp.student))
        params = {"model": model.base, "ratio": task.reflection_ratio}
        key = output_key(inp.job_id, inp.round, "reflection-rule", [data, None if scorer else inp.student], params, "jsonl")
        request = student_pb2.ScoreRequest(
            model=model, dataset=ref_to_pb(data), metrics=[student_pb2.METRIC_REFLECTION],
            ifd_ratio=IFD_RATIOS[task.reflection_ratio],
        )  # fmt: skip
        rule = {r["id"]: r for r in await self._score_call(key, request, "StudentService.Score (reflection rule)")}
        out = []
        for r in records:
            choice = rule.get(r["id"])
            if choice is None:
                out.append(r)
                continue
            v = choice["reflection_choice"]
            versions[v] += 1
            ori = r["reflection"]
            text = r["input"] if v in ("q", "qa") else ori["input"]
            label = r["label"] if v in ("a", "qa") else ori["label"]
            out.append({**r, "input": text, "label": label, "prompt": choice["selected_prompt"],
                        "response": choice["selected_response"], "reflection_choice": v})  # fmt: skip
        return out, versions


IFD_RATIOS = {"ppl": student_pb2.IFD_RATIO_PPL, "loss": student_pb2.IFD_RATIO_LOSS}


def _columns(row: dict | None) -> dict:
    """A record's score columns (everything of its score row but the id)."""
    return {k: v for k, v in (row or {}).items() if k != "id"}

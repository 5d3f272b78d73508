"""Steps the TrainerService computes: training runs (the LoBaSS reference, the round's SFT stage or recipe),
followed to completion with a heartbeat per progress event."""

from __future__ import annotations

import json

import yaml
from temporalio import activity
from temporalio.exceptions import ApplicationError

from orchestrator.activities.base import ActivityBase
from orchestrator.activity_io import StageResult, TrainInput, TrainOutput
from orchestrator.keys import output_key
from syllabus.artifacts import ArtifactRef, training_metrics_key
from syllabus.baselines import arm_recipe, arm_stage, round_recipe
from syllabus.pb import ref_from_pb, ref_to_pb
from syllabus_sdk.common.v1 import common_pb2
from syllabus_sdk.services import TrainerClient, TrainingCancelled, TrainingFailed, TrainingInterrupted
from syllabus_sdk.trainer.v1 import trainer_pb2


class TrainerActivities(ActivityBase):
    def _finished_run(self, key: str) -> tuple[ArtifactRef, dict] | None:
        """(adapter, the trainer's metrics record) of a run that already published both, else None."""
        adapter = self.store.stat(key)
        metrics = self.store.stat(training_metrics_key(key)) if adapter is not None else None
        if adapter is None or metrics is None:
            return None
        return adapter, json.loads(self._read(metrics))

    async def _train(self, request: trainer_pb2.StartTrainingRequest, what: str) -> tuple[ArtifactRef, dict]:
        """(adapter, metrics) of the training run whose job key and output key is `request.output_key`.

        A finished run answers from the store without a call. Otherwise StartTraining re-attaches to
        a running job of that key, resumes a killed one from its checkpoint, or starts it, and the
        run is followed to its end with a heartbeat per event. The metrics are the trainer's own
        record (float64, published before the adapter), the same whichever attempt watched the run.
        Cancelling the activity cancels the training job (`TrainerClient.train_to_completion`).
        """
        key = request.output_key
        if (done := self._finished_run(key)) is not None:
            return done
        async with self._client(TrainerClient, self.config.trainer_address) as (trainer, hb):

            def on_event(event: trainer_pb2.WatchTrainingResponse) -> None:
                state = trainer_pb2.TrainingState.Name(event.state).removeprefix("TRAINING_STATE_")
                hb.update({"state": state, "step": event.step, "total": event.total_steps, "loss": round(float(event.loss), 4)})

            try:
                final = await trainer.train_to_completion(
                    request,
                    on_event=on_event,
                    on_started=lambda training_id: hb.update({"training_id": training_id, "state": "PENDING"}),
                )
            except TrainingFailed as e:
                raise ApplicationError(f"{what}: {e}", type="TrainingFailed", non_retryable=True) from None
            except TrainingCancelled as e:
                # Someone cancelled the training job itself: retrying would not help.
                raise ApplicationError(f"{what}: {e}", type="TrainingCancelled", non_retryable=True) from None
            except TrainingInterrupted as e:
                # The stream ended without a verdict (e.g. the trainer restarted): retry, which
                # reattaches to the same job through its job_key or resumes it from its checkpoint.
                raise ApplicationError(f"{what}: {e}", type="TrainingInterrupted") from None
        adapter = ref_from_pb(final.adapter)
        if adapter is None:
            raise ApplicationError(f"{what}: training succeeded without an adapter", type="DATA_LOSS")
        metrics = self.store.stat(training_metrics_key(key))
        if metrics is None:
            raise ApplicationError(f"{what}: training succeeded without its metrics", type="DATA_LOSS")
        return adapter, json.loads(self._read(metrics))

    @activity.defn
    async def train_adapter(self, inp: TrainInput) -> TrainOutput:
        """TrainerService.StartTraining + WatchTraining: the LoBaSS reference, agreement's judge, the round's SFT stage,
        or the task's staged recipe (Chain of LoRA, curricula, replay, HFT, checkpoint averaging) as one
        checkpointed run; records the training run.

        Heartbeats on every progress event. A retry (this worker died, the trainer restarted) starts
        the same `job_key` again: the trainer re-attaches to the running job, resumes a killed one
        from its checkpoint, or answers from the store; the final event carries the run's true step
        count and loss curve either way. Cancelling the activity cancels the training job.
        """
        if inp.stage not in ("reference", "agreement", "sft", "recipe"):
            raise ApplicationError(
                f"unknown training stage {inp.stage!r}", type="INVALID_ARGUMENT", non_retryable=True
            )
        if why := await self._db(self.metadata.over_training_quota, inp.job_id, None, self.config.tenant_training_tokens_per_day):
            raise ApplicationError(why, type="RESOURCE_EXHAUSTED", non_retryable=True)
        task = self._task(inp.task_ref)
        t = task.train
        lora = {"rank": t.lora_rank, "alpha": t.lora_alpha, "dropout": t.lora_dropout, "target_modules": t.target_modules}
        training = {
            "epochs": t.reference_epochs if inp.stage == "reference" else t.epochs,
            "learning_rate": t.learning_rate,
            "batch_size": t.batch_size,
            "warmup_ratio": t.warmup_ratio,
            "seed": t.seed + inp.repeat,
            "max_seq_len": t.max_seq_len,
        }
        recipe_yaml = ""
        if inp.stage == "recipe":
            if t.recipe is None:
                raise ApplicationError("the task has no train.recipe", type="INVALID_ARGUMENT", non_retryable=True)
            # The loop's recipe unless a baseline arm's; a new seed per round (every arm alike).
            recipe = round_recipe(arm_recipe(t.recipe, inp.arm, inp.repeat), inp.round)
            if recipe.checkpoint_every == 0:  # resumable mid-stage, like every other training run
                recipe = recipe.model_copy(update={"checkpoint_every": self.config.trainer_checkpoint_every})
            recipe_yaml = yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=True)
            params = {"model": task.student.model, "stage": inp.stage, "recipe": recipe_yaml}
            if recipe.teacher_top_k:
                if inp.teacher_logprobs is None:
                    raise ApplicationError("a kd or opd recipe needs the teacher's log-probs (the teacher-logprobs step)",
                                           type="INVALID_ARGUMENT", non_retryable=True)  # fmt: skip
                # the teacher manifest: which teacher's distribution this adapter learnt (in lineage)
                params["teacher"] = {**inp.teacher, "logprobs_uri": inp.teacher_logprobs.uri}
        else:
            params = {"model": task.student.model, "stage": inp.stage, "lora": lora, "training": training}
        step_name = {"reference": "reference", "agreement": "agreement", "sft": "train", "recipe": "train-recipe"}[inp.stage]
        stage = arm_stage(inp.arm, inp.repeat) if inp.arm else inp.stage  # the run's name in SQL
        if inp.arm:
            step_name = f"{stage}-{step_name}"
        if inp.chunk_label:  # an earlier opd chunk of the round: its own run, the last one is the round's
            stage, step_name = f"{stage}-{inp.chunk_label}", f"{step_name}-{inp.chunk_label}"
        key = output_key(inp.job_id, inp.round, step_name, [inp.dataset, inp.init_adapter, *([inp.teacher_logprobs] if inp.teacher_logprobs else [])], params, "tar")
        records = [r for r in self._read_jsonl(inp.dataset) if not r.get("heldout")]
        request = trainer_pb2.StartTrainingRequest(
            job_key=key,
            model=common_pb2.ModelRef(base=task.student.model, adapter=ref_to_pb(inp.init_adapter)),
            dataset=ref_to_pb(inp.dataset),
            lora=trainer_pb2.LoraSpec(**lora),
            training=trainer_pb2.TrainingSpec(**training),
            output_key=key,
            recipe_yaml=recipe_yaml,
            teacher_logprobs=ref_to_pb(inp.teacher_logprobs),
        )
        adapter, metrics = await self._train(request, f"TrainerService training ({inp.stage})")

        steps, mean_loss = int(metrics["steps"]), float(metrics["mean_loss"])
        stages = [
            StageResult(str(st["name"]), int(st["steps"]), float(st.get("seconds") or 0.0),
                        st.get("mean_loss"), int(st.get("samples") or 0))
            for st in metrics.get("stages", [])
        ]
        run = {
            "job_id": inp.job_id,
            "round": inp.round,
            "stage": stage,
            "dataset_uri": inp.dataset.uri,
            "adapter_uri": adapter.uri,
            "samples": len(records),
            "steps": steps,
            "mean_loss": mean_loss,
            "tokens": int(metrics.get("tokens") or 0),
            "params": {**params, "init_adapter": inp.init_adapter.uri if inp.init_adapter is not None else None},
            "metrics": {"losses": [round(float(x), 5) for x in metrics["losses"]],  # one per step
                        "stages": metrics.get("stages", [])},
        }
        await self._db(self.metadata.record_training_run, run, sorted({r["id"] for r in records}), adapter)
        await self._record_artifacts(inp.job_id, inp.round, {f"adapter-{stage}": adapter})
        return TrainOutput(adapter=adapter, samples=len(records), steps=steps, mean_loss=mean_loss, stages=stages)

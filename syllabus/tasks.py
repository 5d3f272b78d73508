"""Task specs: what the user wants distilled, as a validated YAML file.

See docs/task-format.md for the format; examples/banking77/task.yaml is a complete example.
`load_task(path)` resolves `seeds`/`eval` file references relative to the YAML file and returns a
fully inline `TaskSpec`; any problem raises `TaskSpecError` with a one-line message naming it.
`parse_task(text, inline_only=True)` is what the gateway uses: a task sent to a server must carry its
examples inline (`syllabus run` inlines files on the client), so a file reference is rejected without
opening anything on the server. No float may be inf or NaN.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from syllabus.models import DEFAULT_MODEL
from syllabus.prompts import classification_prompt


class TaskSpecError(ValueError):
    """A task spec is invalid; the message is one line naming the problem."""


MAX_NESTING = 50  # deeper YAML is rejected before validation (no RecursionError anywhere)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Example(_Strict):
    """A labelled example."""

    input: str = Field(min_length=1, description="The input text.")
    label: str = Field(min_length=1, description="Its label; must be one of the task's labels.")


class ModelSpec(_Strict):
    model: str = Field(
        DEFAULT_MODEL, min_length=1, max_length=1024,
        description="bundled:smollm2-135m-instruct, a local HF model directory, or (teacher) openai:<name> of an "
        "endpoint configured on the server (SYLLABUS_TEACHER_ENDPOINTS); never a URL.",
    )

    @field_validator("model")
    @classmethod
    def _not_a_url(cls, model: str) -> str:
        if "://" in model.lower() or "@http" in model.lower():
            raise ValueError("name a configured endpoint, not a URL")
        if "\x00" in model:
            raise ValueError("must not contain NUL characters")
        return model


class GenerateSpec(_Strict):
    """Seed expansion by the teacher (Self-Instruct style)."""

    per_label: int = Field(4, ge=1, le=1000, description="Generation prompts per label and round.")
    n: int = Field(1, ge=1, le=16, description="Completions per prompt.")
    temperature: float = Field(0.8, ge=0.0, le=2.0, description="Sampling temperature (0 = greedy).")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="Nucleus sampling cut-off.")
    max_new_tokens: int = Field(40, ge=4, le=1024, description="Tokens per completion.")
    batch_size: int = Field(16, ge=1, le=512, description="Prompts per generation batch.")
    seed: int = Field(0, ge=0, le=2**31 - 1000, description="Sampling seed (a round's seed is seed + round).")
    targeted_per_skill: int = Field(
        0, ge=0, le=100,
        description="From round 2: also generate this many examples per confusion the student showed on the "
        "validation split after the previous round (AnalyzeErrors -> targeted generation); 0 = off.",
    )


class CritiqueSpec(_Strict):
    mode: Literal["judge"] = Field("judge", description="judge: keep/drop each example with a reason.")


class SelectSpec(_Strict):
    """LoBaSS selection: keep the most learnable fraction of the kept examples."""

    metric: Literal["learnability"] = "learnability"
    top_fraction: float = Field(0.5, gt=0.0, le=1.0, description="Share of kept examples selected.")


class TrainSpec(_Strict):
    """One LoRA SFT stage per round (completion-only loss)."""

    epochs: int = Field(2, ge=1, le=100)
    learning_rate: float = Field(1e-3, gt=0.0, le=1.0)
    batch_size: int = Field(8, ge=1, le=1024)
    warmup_ratio: float = Field(0.1, ge=0.0, lt=1.0)
    lora_rank: int = Field(8, ge=1, le=512)
    lora_alpha: float = Field(16.0, gt=0.0, le=65536.0)
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"], min_length=1)
    max_seq_len: int = Field(256, ge=16, le=8192)
    seed: int = Field(0, ge=0, le=2**31 - 1000)
    reference_epochs: int = Field(1, ge=1, le=100, description="Epochs of the brief LoBaSS reference adapter trained from the current student each round.")


class TaskSpec(_Strict):
    """A distillation task. Every field is documented in docs/task-format.md."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    kind: Literal["classification"]
    instructions: str = Field(min_length=1)
    labels: list[str] = Field(min_length=2)
    seeds: list[Example] = Field(min_length=1)
    eval: list[Example] = Field(min_length=1)
    # Error analysis reads the student's mistakes here, never on `eval`: the teacher sees these inputs.
    validation: list[Example] = Field(default_factory=list, description="Validation split; default: the seeds.")
    teacher: ModelSpec = Field(default_factory=ModelSpec)
    student: ModelSpec = Field(default_factory=ModelSpec)
    rounds: int = Field(2, ge=1, le=100)
    generate: GenerateSpec = Field(default_factory=GenerateSpec)
    critique: CritiqueSpec = Field(default_factory=CritiqueSpec)
    select: SelectSpec = Field(default_factory=SelectSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)

    @field_validator("labels")
    @classmethod
    def _unique_labels(cls, labels: list[str]) -> list[str]:
        dupes = sorted({x for x in labels if labels.count(x) > 1})
        if dupes:
            raise ValueError(f"duplicate labels: {', '.join(dupes)}")
        return labels

    @model_validator(mode="after")
    def _labels_known(self) -> TaskSpec:
        known = set(self.labels)
        for field in ("seeds", "eval", "validation"):
            for i, ex in enumerate(getattr(self, field)):
                if ex.label not in known:
                    raise ValueError(f"{field}[{i}].label {ex.label!r} is not in labels")
        # Seed expansion works per label: a label without seeds could never get generated examples.
        missing = [label for label in self.labels if label not in {ex.label for ex in self.seeds}]
        if missing:
            raise ValueError(f"seeds: no seed example for label(s) {', '.join(missing)}")
        return self

    def prompt_for(self, text: str) -> str:
        return classification_prompt(self.instructions, self.labels, text)


def _format_error(source: str, err: ValidationError) -> str:
    e = err.errors()[0]
    loc = ".".join(str(p)[:80] if not isinstance(p, int) else f"[{p}]" for p in e["loc"]).replace(".[", "[")
    msg = " ".join(e["msg"].removeprefix("Value error, ").split())[:300]
    if e["type"] == "extra_forbidden":
        msg = "unknown key"
    elif e["type"] == "missing":
        msg = "missing (required)"
    more = f" (and {len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"{source}: {loc + ': ' if loc else ''}{msg}{more}"


def _read_examples(base: Path, value: object, field: str, source: str) -> object:
    """Inline a `seeds:`/`eval:` file reference (JSONL, or CSV with text/input and label columns)."""
    if not isinstance(value, str):
        return value
    path = (base / value).resolve()
    if not path.is_file():
        raise TaskSpecError(f"{source}: {field}: file {value[:200]!r} not found")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise TaskSpecError(f"{source}: {field}: {value[:200]} is not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise TaskSpecError(f"{source}: {field}: cannot read {value[:200]} ({e.strerror or type(e).__name__})") from None
    if path.suffix == ".csv":
        import csv
        import io

        try:
            rows = list(csv.DictReader(io.StringIO(text, newline="")))
        except csv.Error as e:
            raise TaskSpecError(f"{source}: {field}: {value[:200]}: invalid CSV ({e})") from None
        return [{"input": r.get("input") or r.get("text", ""), "label": r.get("label") or r.get("category", "")} for r in rows]
    records = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line, parse_constant=_reject_constant))
        except (ValueError, RecursionError):
            raise TaskSpecError(f"{source}: {field}: {value[:200]} line {lineno}: invalid JSON") from None
    return records


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not allowed")


def _depth_ok(value: object, limit: int = MAX_NESTING) -> bool:
    """Whether `value` nests at most `limit` levels (iterative: deep input cannot overflow the stack)."""
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, dict | list):
            if depth > limit:
                return False
            stack.extend((x, depth + 1) for x in (v.values() if isinstance(v, dict) else v))
    return True


def parse_task(
    text: str | bytes, source: str = "task", base_dir: Path | None = None, *, inline_only: bool = False
) -> TaskSpec:
    """Parse YAML text into a TaskSpec. File references resolve against base_dir, unless
    `inline_only` (a task sent to a server), where any file reference is an error."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise TaskSpecError(f"{source}: not UTF-8 text (byte {e.start})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = " ".join(str(getattr(e, "problem", None) or e).split())[:200]
        raise TaskSpecError(f"{source}:{where} invalid YAML: {problem}") from None
    except RecursionError:
        raise TaskSpecError(f"{source}: nested too deeply (at most {MAX_NESTING} levels)") from None
    except (ValueError, OverflowError) as e:  # e.g. a number YAML cannot represent
        raise TaskSpecError(f"{source}: invalid YAML: {type(e).__name__}") from None
    if not isinstance(data, dict):
        raise TaskSpecError(f"{source}: expected a mapping of task fields at the top level")
    if not _depth_ok(data):
        raise TaskSpecError(f"{source}: nested too deeply (at most {MAX_NESTING} levels)")
    for field in ("seeds", "eval", "validation"):
        if field in data:
            if inline_only and isinstance(data[field], str):
                raise TaskSpecError(
                    f"{field}: a task sent to the gateway must carry its examples inline; `syllabus run` inlines files"
                )
            data[field] = _read_examples(base_dir or Path.cwd(), data[field], field, source)
    try:
        return TaskSpec.model_validate(data)
    except ValidationError as e:
        raise TaskSpecError(_format_error(source, e)) from None
    except RecursionError:
        raise TaskSpecError(f"{source}: nested too deeply (at most {MAX_NESTING} levels)") from None


def load_task(path: str | Path) -> TaskSpec:
    path = Path(path)
    if not path.is_file():
        raise TaskSpecError(f"{path}: task file not found")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise TaskSpecError(f"{path}: cannot read ({e.strerror or type(e).__name__})") from None
    return parse_task(raw, source=str(path), base_dir=path.parent)


def dump_task(task: TaskSpec) -> str:
    """The task as self-contained YAML (seeds and eval inline), as sent to the gateway."""
    return yaml.safe_dump(task.model_dump(mode="json"), sort_keys=False, allow_unicode=True)

"""The student's models: one cached base per base name, an adapter wrapped around it per request.

LoBaSS needs the response loss under the base student and under the reference adapter. Both come
from ONE model load: the adapter is injected into the cached base with peft, the base losses are
computed inside `disable_adapter()`, and the adapter is unloaded again when the request ends, so
the next request sees the clean base. If wrapping fails half-way the base is evicted (reloaded on
next use) rather than trusted.

Heavy imports (torch, transformers, peft) happen inside the methods.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from syllabus.models import check_model_ref, load_model

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)


STUDENT_ADAPTER = "current_student"  # the second adapter of a LoBaSS round >= 2 (see with_adapter)


class AdapterMismatch(Exception):
    """The adapter cannot be applied to the base model (other architecture or shapes)."""


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class ModelCache:
    """Loaded base models by base name. Not thread-safe: the service calls it under one lock."""

    def __init__(self, device: str | None = None, dtype: str = "float32") -> None:
        self.device = device or default_device()
        self.dtype = dtype
        self._bases: dict[str, tuple[PreTrainedModel, PreTrainedTokenizerBase]] = {}

    def get(self, base: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        """The base model (eval mode, on the cache's device) and its tokenizer; loads it once.

        Raises `syllabus.models.ModelNotFound` if `base` names nothing loadable.
        """
        if base not in self._bases:
            check_model_ref(base)
            model, tok = load_model(base, dtype=self.dtype)
            model.to(self.device)
            self._bases[base] = (model, tok)
            log.info("loaded student base %s on %s", base, self.device)
        return self._bases[base]

    def evict(self, base: str) -> None:
        self._bases.pop(base, None)

    @contextmanager
    def with_adapter(self, base: str, adapter_dir: Path, student_dir: Path | None = None) -> Iterator[PreTrainedModel]:
        """Yield the base wrapped with the peft adapter in `adapter_dir`; unwrap it on exit.

        Inside, `with model.disable_adapter():` gives the base student on the same weights; with
        `student_dir`, that adapter is loaded too as `STUDENT_ADAPTER`, and `scoring.run_plan` takes
        the "base" losses under it (the current student of a later LoBaSS round).
        """
        from peft import PeftModel

        model, tok = self.get(base)
        try:
            wrapped = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
            if student_dir is not None:
                wrapped.load_adapter(str(student_dir), adapter_name=STUDENT_ADAPTER, is_trainable=False)
        except (ValueError, RuntimeError, KeyError) as e:
            # peft injects layers before loading weights: a failure can leave the base modified.
            self.evict(base)
            raise AdapterMismatch(f"adapter does not fit base {base!r}: {type(e).__name__}: {e}") from e
        wrapped.eval()
        try:
            yield wrapped
        finally:
            try:
                self._bases[base] = (wrapped.unload(), tok)
            except Exception:
                self.evict(base)
                raise

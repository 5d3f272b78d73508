"""The teacher's top-k log-probs at every response position of (prompt, response) records: the
artifact the teacher writes (TeacherService.TopLogprobs) and the trainer's `kd` stages read.

A record is found by `record_digest(prompt, response)` (its content, not its place in a file), so
the trainer can join the artifact with any records file that holds the same records. Per record,
one row per response target of `syllabus.prompts.encode_example` (the response tokens and the
end-of-turn token, in order): the k most likely token ids (int32, most likely first), their
log-probs (fp16, under the teacher at temperature 1, not renormalised) and the log-prob of the
token the record actually has there (fp16). An `.npz` without pickles: arrays only.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

#: Version of the layout below; a reader refuses another.
FORMAT = 1
DEFAULT_TOP_K = 20
MAX_TOP_K = 100


class TopKError(ValueError):
    """A top-k artifact that cannot be read, or does not fit the records it is used with."""


def record_digest(prompt: str, response: str) -> str:
    """Content id of a (prompt, response) record: sha256 of the two, length-prefixed."""
    h = hashlib.sha256()
    for part in (prompt, response):
        b = part.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


@dataclass(frozen=True)
class TopK:
    """One record's teacher distribution: `ids` and `logprobs` [T, k], `chosen` [T]."""

    ids: np.ndarray
    logprobs: np.ndarray
    chosen: np.ndarray

    def __len__(self) -> int:
        return int(self.ids.shape[0])


def dumps(rows: Mapping[str, TopK], k: int, teacher: Mapping[str, str]) -> bytes:
    """The artifact bytes for `rows` (digest -> TopK, every TopK with k columns); `teacher` (id,
    model, revision, ...) is stored with it so lineage can say which teacher scored what."""
    digests = sorted(rows)
    lengths = [len(rows[d]) for d in digests]
    offsets = np.zeros(len(digests) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(lengths, dtype=np.int64)
    empty = np.zeros((0, k))
    ids = np.concatenate([rows[d].ids for d in digests] or [empty]).astype(np.int32)
    lps = np.concatenate([rows[d].logprobs for d in digests] or [empty]).astype(np.float16)
    chosen = np.concatenate([rows[d].chosen for d in digests] or [np.zeros(0)]).astype(np.float16)
    if ids.shape[1:] != (k,) or lps.shape != ids.shape:
        raise TopKError(f"every record needs exactly {k} log-probs per position")
    arrays = {
        "format": np.array([FORMAT, k], dtype=np.int64), "digests": np.array(digests, dtype="<U64"), "offsets": offsets,
        "ids": ids, "logprobs": lps, "chosen": chosen,
        "teacher_keys": np.array(list(teacher), dtype=str), "teacher_values": np.array(list(teacher.values()), dtype=str),
    }  # fmt: skip
    return _npz(arrays)


def _npz(arrays: Mapping[str, np.ndarray]) -> bytes:
    """`np.savez_compressed`'s format with fixed entry timestamps: the same arrays give the same bytes,
    so a retried step republishes an identical artifact (savez stamps each entry with the clock)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, arr in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w") as f:
                np.lib.format.write_array(f, np.asanyarray(arr), allow_pickle=False)
    return buf.getvalue()


@dataclass(frozen=True)
class TopKSet:
    """A read artifact: per digest its rows, the k, and the teacher that wrote it."""

    rows: dict[str, TopK]
    k: int
    teacher: dict[str, str]

    def for_record(self, prompt: str, response: str, targets: int) -> TopK:
        """The rows of one record, checked against the number of targets the trainer encoded (the
        trainer may truncate a long response to its max_seq_len: the first `targets` rows then)."""
        got = self.rows.get(record_digest(prompt, response))
        if got is None:
            raise TopKError(f"no teacher log-probs for the record {prompt[:40]!r} -> {response[:40]!r}")
        if len(got) < targets:
            raise TopKError(
                f"teacher log-probs cover {len(got)} response tokens of a record the student tokenizes into "
                f"{targets}: teacher and student tokenize differently"
            )
        return TopK(got.ids[:targets], got.logprobs[:targets], got.chosen[:targets])


def loads(data: bytes) -> TopKSet:
    try:
        z = np.load(io.BytesIO(data), allow_pickle=False)
        fmt, k = (int(x) for x in z["format"])
        if fmt != FORMAT:
            raise TopKError(f"top-k artifact format {fmt}, this reader knows {FORMAT}")
        digests, offsets = [str(d) for d in z["digests"]], z["offsets"]
        ids, lps, chosen = z["ids"], z["logprobs"], z["chosen"]
        teacher = dict(zip((str(x) for x in z["teacher_keys"]), (str(x) for x in z["teacher_values"]), strict=True))
    except TopKError:
        raise
    except (OSError, EOFError, zipfile.BadZipFile, KeyError, ValueError, TypeError) as e:
        raise TopKError(f"not a top-k artifact ({type(e).__name__})") from None
    if len(offsets) != len(digests) + 1 or offsets[-1] != len(ids) or ids.shape != lps.shape or len(chosen) != len(ids):
        raise TopKError("top-k artifact arrays do not agree in length")
    rows = {
        d: TopK(ids[offsets[i] : offsets[i + 1]], lps[offsets[i] : offsets[i + 1]], chosen[offsets[i] : offsets[i + 1]])
        for i, d in enumerate(digests)
    }
    return TopKSet(rows, k, teacher)


def topk_from_logits(logits, targets: Sequence[int], k: int) -> TopK:
    """Rows of one record from the teacher's logits [T, vocab] at the positions that predict
    `targets` (torch tensors in, numpy out)."""
    import torch

    logp = torch.log_softmax(logits.float(), dim=-1)
    top = logp.topk(k, dim=-1)
    chosen = logp.gather(1, torch.tensor(list(targets), device=logp.device)[:, None])[:, 0]
    return TopK(top.indices.cpu().numpy().astype(np.int32), top.values.cpu().numpy().astype(np.float16),
                chosen.cpu().numpy().astype(np.float16))  # fmt: skip

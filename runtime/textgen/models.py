"""Which language models the runtime serves, and loading them (a start-up step that may fail).

Each served model is a local Hugging Face model directory named in the settings
(runtime.textgen.models); with none named, the embedded test model (default_model.py) is
built under the data dir at first start and served twice: as a causal LM and, mean-pooled,
as an embedding model. A model that cannot be loaded stops the start with one line naming
the model, its directory and what is wrong.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import torch

from dropwire.runtime.errors import ModelLoadError
from dropwire.runtime.model import resolve_device
from dropwire.runtime.settings import TextGenSettings, TextModelSettings
from dropwire.runtime.textgen.default_model import build_default_model

DEFAULT_MODEL = "dropwire-tiny"
DEFAULT_EMBEDDING_MODEL = "dropwire-tiny-embed"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "auto": "auto"}


class SentenceTransformersPooling(msgspec.Struct):
    """The part of a sentence-transformers 1_Pooling/config.json that matters here."""

    pooling_mode_cls_token: bool = False
    pooling_mode_mean_tokens: bool = True


@dataclass(eq=False)
class TextModel:
    """A loaded model: its tokenizer, its module on the device, what requests are checked against."""

    name: str
    task: str  # "generate" | "embed"
    backend: str  # "transformers" | "vllm"
    path: Path
    tokenizer: Any
    module: Any  # a transformers PreTrainedModel, or a vLLM engine
    device: torch.device
    context_length: int
    eos_ids: frozenset[int]
    pad_id: int
    pooling: str = "mean"
    created: int = field(default_factory=lambda: int(time.time()))

    def count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])


def served_models(settings: TextGenSettings, *, default_dir: Path) -> list[TextModelSettings]:
    if settings.models:
        return list(settings.models)
    return [
        TextModelSettings(name=DEFAULT_MODEL, path=str(default_dir)),
        TextModelSettings(name=DEFAULT_EMBEDDING_MODEL, path=str(default_dir), task="embed"),
    ]


def load_models(
    settings: TextGenSettings, *, default_dir: Path, device_name: str, seed: int, log: logging.Logger
) -> list[TextModel]:
    specs = served_models(settings, default_dir=default_dir)
    if not settings.models and not (default_dir / "config.json").is_file():
        log.info("no embedded test text model at %s yet: building one from the shipped text", default_dir)
        loss = build_default_model(default_dir, steps=settings.default_model_train_steps, seed=seed)
        log.info("embedded test text model trained: final loss %.3f", loss)
    device = resolve_device(device_name)
    return [load_model(spec, device, settings.dtype) for spec in specs]


def load_model(spec: TextModelSettings, device: torch.device, dtype: str) -> TextModel:
    path = Path(spec.path).expanduser()
    what = f"text model {spec.name!r} ({spec.task}, {spec.backend}) at {path}"
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{what} cannot be loaded: no config.json there (expected a Hugging Face model directory)")
    if spec.backend == "vllm":
        from dropwire.runtime.textgen.vllm_engine import load_vllm

        return load_vllm(spec, path, device, dtype, what=what)
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        loader = transformers.AutoModelForCausalLM if spec.task == "generate" else transformers.AutoModel
        module = loader.from_pretrained(path, dtype=DTYPES[dtype]).to(device).eval()
    except Exception as exc:  # transformers raises many types for a broken or foreign directory
        raise ModelLoadError(f"{what} cannot be loaded: {type(exc).__name__}: {_first_line(exc)}") from None
    config = module.config
    context = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if not context:
        raise ModelLoadError(f"{what}: its config.json names no context length (max_position_embeddings)")
    eos = getattr(config, "eos_token_id", None)
    eos_ids = {eos} if isinstance(eos, int) else set(eos or ())
    if tokenizer.eos_token_id is not None:
        eos_ids.add(tokenizer.eos_token_id)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (min(eos_ids) if eos_ids else 0)
    if spec.task == "generate" and not getattr(tokenizer, "chat_template", None):
        logging.getLogger("dropwire.runtime").warning(
            "%s has no chat template: /v1/chat/completions joins the messages as plain lines", what
        )
    return TextModel(
        name=spec.name,
        task=spec.task,
        backend=spec.backend,
        path=path,
        tokenizer=tokenizer,
        module=module,
        device=device,
        context_length=int(context),
        eos_ids=frozenset(eos_ids),
        pad_id=int(pad),
        pooling=_pooling(path, what) if spec.task == "embed" else "mean",
    )


def _pooling(path: Path, what: str) -> str:
    """cls where a sentence-transformers pooling config asks for it; else mean pooling."""
    config = path / "1_Pooling" / "config.json"
    if not config.is_file():
        return "mean"
    try:
        pooling = msgspec.json.decode(config.read_bytes(), type=SentenceTransformersPooling)
    except msgspec.DecodeError as exc:
        raise ModelLoadError(f"{what}: {config} is not a valid pooling config: {exc}") from None
    return "cls" if pooling.pooling_mode_cls_token and not pooling.pooling_mode_mean_tokens else "mean"


def _first_line(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else "no detail"

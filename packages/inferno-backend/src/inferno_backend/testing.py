"""Test doubles for the daemon: a byte-level tokenizer, a fake model source, a memory-backed
`FakeEngine` factory, and `fake_orchestrator` wiring them with the real bus, checker and memory
statistics. Used by this package's tests and by anyone testing code that talks to the API.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inferno_health import HealthChecker
from inferno_inference import EmbeddingOutput, EmbeddingRequest, EngineStats, GenerationRequest
from inferno_inference.testing import FakeEngine
from inferno_memory import Allocation, HostMemoryResource, StatisticsAdaptor
from inferno_models import ChatTemplate, GenerationDefaults, ModelConfig, ModelNotFoundError
from inferno_models.testing import tiny_config

from inferno_backend.config import ServeConfig
from inferno_backend.events import EventBus
from inferno_backend.orchestrator import Orchestrator, RegistrationHandle
from inferno_backend.protocols import ServableModel, StatisticsResource

__all__ = [
    "CHAT_TEMPLATE",
    "ByteTokenizer",
    "FakeModel",
    "FakeModelSource",
    "MemoryBackedEngine",
    "fake_orchestrator",
]

#: A ChatML template like SmolLM2's.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class ByteTokenizer:
    """One token per UTF-8 byte (id = byte + 3); id 1 is BOS and 2 is EOS."""

    bos_token_id = 1
    eos_token_ids = (2,)
    vocab_size = 259

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """Byte ids of ``text``, after BOS when ``add_special_tokens``."""
        ids = [b + 3 for b in text.encode("utf-8")]
        return [self.bos_token_id, *ids] if add_special_tokens else ids

    def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = False) -> str:
        """Text of ``ids``; special ids decode to nothing."""
        return bytes(i - 3 for i in ids if 3 <= i < 259).decode("utf-8", errors="replace")

    def id_to_token(self, token_id: int) -> str | None:
        """``<s>``, ``</s>`` and ``<unk>`` for 1, 2 and 0; a byte's escape (``<0x41>``) else."""
        if not 0 <= token_id < self.vocab_size:
            return None
        return ("<unk>", "<s>", "</s>")[token_id] if token_id < 3 else f"<0x{token_id - 3:02X}>"


@dataclass(frozen=True, slots=True)
class FakeModel:
    """A model without weights: a tiny config, the byte tokenizer and a ChatML template."""

    name: str
    config: ModelConfig
    tokenizer: ByteTokenizer = field(default_factory=ByteTokenizer)
    chat_template: ChatTemplate | None = field(default_factory=lambda: ChatTemplate(CHAT_TEMPLATE))
    generation: GenerationDefaults = field(default_factory=GenerationDefaults)

    def nbytes(self) -> int:
        """No weights."""
        return 0


class FakeModelSource:
    """Knows ``names``; loads a `FakeModel` with ``max_model_len`` context, the sampling
    settings ``generation`` and the chat template ``chat_template`` (None: none) for each."""

    def __init__(
        self,
        names: Sequence[str] = ("default",),
        *,
        max_model_len: int = 2048,
        generation: GenerationDefaults | None = None,
        chat_template: str | None = CHAT_TEMPLATE,
    ) -> None:
        self.names = list(names)
        self.max_model_len = max_model_len
        self.generation = generation or GenerationDefaults()
        self.chat_template = chat_template
        self.loads: list[str] = []
        #: The ``lora`` of each load, in order.
        self.adapters: list[str | None] = []

    def available(self) -> Sequence[str]:
        """The loadable names."""
        return list(self.names)

    def load(self, name: str, *, lora: str | None = None) -> ServableModel:
        """A fresh `FakeModel`, or `ModelNotFoundError` (for ``lora`` too, when nothing is at
        that path: a fake merges nothing, but refuses a missing adapter as the real source
        does)."""
        if name not in self.names:
            raise ModelNotFoundError(f"no model named {name!r}")
        if lora is not None and not Path(lora).exists():
            raise ModelNotFoundError(f"no LoRA adapter at {lora}")
        self.loads.append(name)
        self.adapters.append(lora)
        config = tiny_config(vocab_size=259, max_position_embeddings=self.max_model_len)
        template = None if self.chat_template is None else ChatTemplate(self.chat_template)
        return FakeModel(name, config, chat_template=template, generation=self.generation)


class MemoryBackedEngine:
    """A `FakeEngine` that holds ``kv_bytes`` from a memory resource until shutdown, as a real
    engine holds its KV cache, so the daemon's memory-return check has something to check.
    ``leak`` keeps the memory after shutdown (to test that the check notices)."""

    def __init__(
        self, engine: FakeEngine, memory: StatisticsResource, kv_bytes: int, *, leak: bool = False
    ) -> None:
        self.inner = engine
        self.max_model_len = engine.max_model_len
        self._memory = memory
        self._kv: Allocation | None = memory.allocate(kv_bytes)
        self._leak = leak

    def generate(self, request: GenerationRequest) -> Any:
        """Delegate to the fake engine."""
        return self.inner.generate(request)

    async def embed(self, request: EmbeddingRequest) -> EmbeddingOutput:
        """Delegate to the fake engine."""
        return await self.inner.embed(request)

    def abort(self, request_id: str) -> None:
        """Delegate to the fake engine."""
        self.inner.abort(request_id)

    def stats(self) -> EngineStats:
        """Delegate to the fake engine."""
        return self.inner.stats()

    async def shutdown(self) -> None:
        """Shut the fake engine down and give the KV memory back (unless leaking)."""
        await self.inner.shutdown()
        if self._kv is not None and not self._leak:
            self._memory.deallocate(self._kv)
            self._kv = None


def fake_orchestrator(
    config: ServeConfig | None = None,
    *,
    engine_options: dict[str, Any] | None = None,
    source: FakeModelSource | None = None,
    kv_bytes: int = 1 << 20,
    leak: bool = False,
    registration: RegistrationHandle | None = None,
) -> Orchestrator:
    """An orchestrator over fakes: `FakeEngine` (with ``engine_options``) per model, a
    `FakeModelSource`, host memory behind statistics, a real `HealthChecker` and `EventBus`.

    The engines built are appended to ``orchestrator.engines`` (a list attribute) for tests.
    """
    config = config or ServeConfig(warmup=False)
    memory = StatisticsAdaptor(HostMemoryResource())
    engines: list[FakeEngine] = []

    def factory(model: ServableModel, resource: StatisticsResource) -> MemoryBackedEngine:
        options = {"max_model_len": model.config.max_position_embeddings, **(engine_options or {})}
        engine = FakeEngine(**options)
        engines.append(engine)
        return MemoryBackedEngine(engine, resource, kv_bytes, leak=leak)

    orchestrator = Orchestrator(
        config,
        models=source or FakeModelSource([config.model]),
        engine_factory=factory,
        memory=memory,
        health=HealthChecker(interval=60.0, timeout=1.0),
        bus=EventBus(),
        registration=registration,
    )
    orchestrator.engines = engines  # type: ignore[attr-defined]
    return orchestrator

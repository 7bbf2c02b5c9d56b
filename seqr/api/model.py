"""A base model with exactly one principal's authorised adapters attached and SEQR-routed.

Every request (``generate``, ``route``, ``logits``) starts with :meth:`RoutedLanguageModel.refresh`:
one read of the registry that re-checks the caller's token and principal and returns the
registry's change counter. Only when the counter moved are the authorised adapters resolved
again. Versions no longer authorised are then dropped from the device cache and the routing is
rebuilt, so a revoked grant or a replaced version never serves another request.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from seqr.api.cache import AdapterCache, CacheKey, StackedAdapters
from seqr.api.explain import ModuleRoute, RouteExplanation
from seqr.api.timings import LoadTimings
from seqr.errors import InvalidInputError
from seqr.registry.views import AdapterVersionInfo, Library
from seqr.routing import AdapterFactors, Granularity, RoutedModel, RoutingMethod, StackedFactors
from seqr.routing.attach import attach_stacked, stack_adapters
from seqr.training.base_model import BaseModel

if TYPE_CHECKING:
    from seqr.api.session import Session

logger = logging.getLogger(__name__)


class RoutedLanguageModel:
    """A causal LM routed among the caller's authorised adapters of one library.

    ``silos`` lists the silos currently routed among, in candidate order. ``load_timings`` is
    the :class:`LoadTimings` of the last load of adapters (at construction, or when a refresh
    found the authorised versions changed). The wrapper is not meant for concurrent requests from
    several threads; a lock serialises them.
    """

    def __init__(
        self,
        session: Session,
        base: BaseModel,
        library: Library,
        *,
        device: torch.device,
        cache: AdapterCache,
        method: RoutingMethod = RoutingMethod.SEQR,
        granularity: Granularity = Granularity.TOKEN,
    ) -> None:
        self._session = session
        self.base = base
        self.library = library
        self.device = device
        self.method = method
        self.granularity = granularity
        self._cache = cache
        self._shared_a = {name: a.to(device) for name, a in library.shared_a.items()}
        self._routed: RoutedModel | None = None
        self._stacked: StackedAdapters | None = None  # keeps the stacks findable in the cache while in use
        self._versions: dict[CacheKey, AdapterVersionInfo] = {}
        self._generation: int | None = None
        self._lock = threading.RLock()
        self.load_timings = LoadTimings()
        self._first_forward_pending = False
        self._request_start = time.perf_counter()
        self._forward_hook = self.model.register_forward_hook(self._after_forward)
        self._prepare_tokenizer()
        accepts_logits_to_keep = "logits_to_keep" in inspect.signature(self.model.forward).parameters
        self._no_logits: dict[str, int] = {"logits_to_keep": 1} if accepts_logits_to_keep else {}
        self.refresh()

    # Registry state.

    @property
    def model(self) -> torch.nn.Module:
        return self.base.model

    @property
    def tokenizer(self) -> Any:
        return self.base.tokenizer

    @property
    def silos(self) -> tuple[str, ...]:
        return self._routed.adapter_ids if self._routed is not None else ()

    @property
    def versions(self) -> list[AdapterVersionInfo]:
        """The adapter versions currently attached, in candidate order."""
        return sorted(self._versions.values(), key=lambda version: version.silo)

    def refresh(self) -> None:
        """Re-check the caller and bring the attached adapters in line with the registry.

        Raises AuthenticationError when the token was revoked or expired or the principal was
        disabled; the model then serves nothing until a new login.
        """
        with self._lock:
            registry = self._session.registry
            principal = self._session.principal
            start = time.perf_counter()
            generation = registry.check_principal(principal)
            if generation == self._generation:
                return
            authorised = {
                (principal.tenant_id, version.id): version
                for version in registry.authorized_adapters(principal)
                if version.library == self.library.info.name
            }
            if set(authorised) != set(self._versions):
                timings = LoadTimings(resolve_seconds=time.perf_counter() - start)
                self._cache.drop(set(self._versions) - set(authorised))
                ordered = sorted(authorised, key=lambda key: authorised[key].silo)
                silos = [authorised[key].silo for key in ordered]
                if ordered:
                    self._attach(ordered, silos, timings)
                else:
                    self._detach()
                    logger.warning("%s has no authorised adapter left; serving the base model", principal.describe())
                self._versions = authorised
                self.load_timings = timings
                self._first_forward_pending = True
                logger.info(
                    "%s routes among %d adapter(s) of library %s: %s",
                    principal.describe(), len(silos), self.library.info.name, ", ".join(silos) or "none",
                )
            self._generation = generation

    def _start_request(self) -> None:
        """Mark the start of a request (for the first-forward time) and refresh the adapters."""
        self._request_start = time.perf_counter()
        self.refresh()

    def _after_forward(self, module: torch.nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if self._first_forward_pending:
            self._first_forward_pending = False
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.load_timings.first_forward_seconds = time.perf_counter() - self._request_start

    def _attach(self, ordered: list[CacheKey], silos: list[str], timings: LoadTimings) -> None:
        """Route among the versions ``ordered`` (named ``silos``), loading and stacking what the cache lacks."""
        registry, principal = self._session.registry, self._session.principal

        def load(missing: list[CacheKey]) -> list[AdapterFactors]:
            return [loaded.factors for loaded in registry.load_adapters(principal, [key[1] for key in missing])]

        def stack(factors: list[AdapterFactors]) -> dict[str, StackedFactors]:
            # Detaching only after the load succeeded keeps the previous routing when it fails.
            self._detach()
            # The registry's codec rejected NaN and Inf when it decoded these factors.
            return stack_adapters(self.model, self._shared_a, dict(zip(silos, factors, strict=True)), check_values=False)

        stacked = self._cache.get_or_stack(ordered, load, stack, timings)
        self._detach()
        timings.adapters = len(ordered)
        timings.adapter_bytes = sum(
            stack.q[0].nbytes + stack.r[0].nbytes for stack in stacked.modules.values()
        ) * len(ordered)
        attach_start = time.perf_counter()
        info = self.library.info
        self._routed = attach_stacked(
            self.model, stacked.modules, silos, scaling=info.alpha / info.rank,
            method=self.method, granularity=self.granularity,
        )
        self._stacked = stacked
        timings.attach_seconds += time.perf_counter() - attach_start

    def _detach(self) -> None:
        if self._routed is not None:
            self._routed.detach()
            self._routed = None
        self._stacked = None

    def close(self) -> None:
        """Detach the adapters and release the cached factors this model used."""
        # NOTE: the cache is shared by every session of the registry, so another session that
        # still routes among these versions decrypts them again on its next change.
        with self._lock:
            self._detach()
            self._cache.drop(self._versions)
            self._versions = {}
            self._forward_hook.remove()

    # Requests.

    def generate(
        self,
        prompts: str | Sequence[str],
        *,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        chat: bool = True,
    ) -> list[str]:
        """Generate a completion for each prompt, batched; greedy unless ``temperature`` > 0.

        ``chat`` wraps each prompt in the tokenizer's chat template when it has one. Raises
        InvalidInputError for an empty prompt or one that, with ``max_new_tokens``, exceeds the
        model's context length.
        """
        texts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not texts:
            raise InvalidInputError("no prompt given; pass at least one non-empty prompt")
        if max_new_tokens < 1:
            raise InvalidInputError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        with self._lock:
            self._start_request()
            encoded = self._encode([self._format(text, chat) for text in self._checked(texts)], reserve=max_new_tokens)
            sampling: dict[str, Any] = {"do_sample": False}
            if temperature > 0:
                sampling = {"do_sample": True, "temperature": temperature}
            with torch.no_grad():
                output = self.model.generate(
                    **encoded, max_new_tokens=max_new_tokens, pad_token_id=self.tokenizer.pad_token_id, **sampling
                )
            if self._routed is not None:
                self._routed.reset()
            new_tokens = output[:, encoded["input_ids"].shape[1]:]
            return [self.tokenizer.decode(row, skip_special_tokens=True) for row in new_tokens]

    def logits(self, text: str) -> torch.Tensor:
        """Return the routed next-token logits of ``text``: (1, tokens, vocabulary) float32 on the CPU."""
        with self._lock:
            self._start_request()
            encoded = self._encode(self._checked([text]), reserve=0)
            with torch.no_grad():
                logits = self.model(**encoded).logits
            if self._routed is not None:
                self._routed.reset()
            return logits.float().cpu()

    def route(self, text: str) -> RouteExplanation:
        """Explain the routing of ``text``: per adapted module, the silo chosen for each token and the scores."""
        return self.route_many([text])[0]

    def route_many(self, texts: Sequence[str], *, batch_size: int = 8) -> list[RouteExplanation]:
        """Explain the routing of several texts, batched ``batch_size`` at a time."""
        texts = self._checked(list(texts))
        # Batching texts of similar length keeps padding, which is computed and then discarded, small.
        lengths = [len(ids) for ids in self.tokenizer(texts)["input_ids"]]
        order = sorted(range(len(texts)), key=lambda position: lengths[position])
        explanations: dict[int, RouteExplanation] = {}
        with self._lock:
            self._start_request()
            for start in range(0, len(order), batch_size):
                positions = order[start:start + batch_size]
                batch = self._route_batch([texts[position] for position in positions])
                explanations.update(zip(positions, batch, strict=True))
        return [explanations[position] for position in range(len(texts))]

    def _route_batch(self, texts: list[str]) -> list[RouteExplanation]:
        encoded = self._encode(texts, reserve=0)
        ids = encoded["input_ids"]
        mask = encoded["attention_mask"].bool()
        tokens = [
            [self.tokenizer.decode([int(token)]) for token in row[row_mask]]
            for row, row_mask in zip(ids.cpu(), mask.cpu(), strict=True)
        ]
        if self._routed is None:
            return [RouteExplanation(text, toks, (), {}) for text, toks in zip(texts, tokens, strict=True)]
        routed = self._routed
        with torch.no_grad(), routed.capture() as trace:
            # Routing needs no next-token logits; projecting only the last position onto the
            # vocabulary saves most of the LM head's work.
            self.model(**encoded, **self._no_logits)
        routed.reset()
        silos = routed.adapter_ids
        per_text: list[dict[str, ModuleRoute]] = [{} for _ in texts]
        for module in trace.modules:
            top1 = trace.top1(module).cpu()  # (batch, seq)
            scores = trace.scores(module).cpu()  # (batch, seq, N)
            for row in range(len(texts)):
                keep = mask[row].cpu()
                chosen = [silos[int(index)] if index >= 0 else None for index in top1[row][keep]]
                per_text[row][module] = ModuleRoute(chosen, scores[row][keep].tolist())
        return [
            RouteExplanation(text, toks, silos, modules)
            for text, toks, modules in zip(texts, tokens, per_text, strict=True)
        ]

    # Input handling.

    def _prepare_tokenizer(self) -> None:
        tokenizer = self.tokenizer
        if getattr(tokenizer, "pad_token_id", None) is None and getattr(tokenizer, "eos_token", None) is not None:
            tokenizer.pad_token = tokenizer.eos_token
        # Batched generation appends new tokens on the right, so prompts are padded on the left.
        tokenizer.padding_side = "left"

    @staticmethod
    def _checked(texts: list[str]) -> list[str]:
        if not texts:
            raise InvalidInputError("no text given; pass at least one non-empty text")
        for position, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise InvalidInputError(f"prompt {position} is empty; pass non-empty text")
        return texts

    def _format(self, text: str, chat: bool) -> str:
        if chat and getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
            )
        return text

    def _encode(self, texts: list[str], *, reserve: int) -> dict[str, torch.Tensor]:
        encoded = self.tokenizer(texts, return_tensors="pt", padding=True)
        limit = getattr(self.model.config, "max_position_embeddings", None)
        longest = int(encoded["input_ids"].shape[1])
        if limit is not None and longest + reserve > limit:
            raise InvalidInputError(
                f"the prompt has {longest} tokens and {reserve} new tokens were requested, more than the "
                f"model's context of {limit} tokens; shorten the prompt or lower max_new_tokens"
            )
        return {key: value.to(self.device) for key, value in encoded.items() if key in ("input_ids", "attention_mask")}

"""The fixed option sets of routing: which router, at which granularity, and with which settings."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from seqr.errors import InvalidInputError

DEFAULT_LAG_K = 20


class RoutingMethod(str, Enum):
    """The rule a router scores the candidate adapters of a token with.

    SEQR: (||R_i A x|| - mu_i) / sigma_i, exact norm maximisation at O(N r^2) per token.
    ARROW: |v_i . x| with v_i the top right singular vector of B_i A (Ostapenko et al. 2024).
    SPECTR: ||S_i V_i^T x|| from the SVD of B_i A, optionally z-scored (Fleshman and Van Durme 2025).
    LAG: the ARROW top-k filter, then SPECTR among those k (Fleshman and Van Durme 2025).
    NAIVE: ||B_i (A x)|| computed directly; the reference that the tests compare against.
    MU: no selection; every token gets the mean update of all candidates.
    """

    SEQR = "seqr"
    ARROW = "arrow"
    SPECTR = "spectr"
    LAG = "lag"
    NAIVE = "naive"
    MU = "mu"

    @classmethod
    def parse(cls, value: RoutingMethod | str) -> RoutingMethod:
        if isinstance(value, RoutingMethod):
            return value
        try:
            return cls(str(value).lower())
        except ValueError:
            choices = ", ".join(m.value for m in cls)
            raise InvalidInputError(f"unknown routing method {value!r}; use one of: {choices}") from None


class Granularity(str, Enum):
    """The unit a routed layer chooses an adapter for.

    TOKEN: every token picks its own adapter at every adapted module.
    SEQUENCE: every sequence picks one adapter per module, from the mean score over its prompt
    tokens (padding excluded), and keeps it for the tokens generated after the prompt.
    """

    TOKEN = "token"
    SEQUENCE = "sequence"

    @classmethod
    def parse(cls, value: Granularity | str) -> Granularity:
        if isinstance(value, Granularity):
            return value
        aliases = {"token": cls.TOKEN, "per-token": cls.TOKEN, "sequence": cls.SEQUENCE, "per-sequence": cls.SEQUENCE}
        try:
            return aliases[str(value).lower()]
        except KeyError:
            raise InvalidInputError(
                f"unknown routing granularity {value!r}; use 'token' (per-token) or 'sequence' (per-sequence)"
            ) from None


@dataclass(frozen=True)
class RoutingConfig:
    """The settings of one router.

    ``top_k`` adapters are mixed per token with softmax weights over their scores (1: plain arg max).
    ``lag_k`` is the size of LAG's ARROW filter; other methods ignore it. ``use_calibration``
    turns the z-scoring with mu and sigma off even when the factors carry them.
    """

    method: RoutingMethod = RoutingMethod.SEQR
    top_k: int = 1
    lag_k: int = DEFAULT_LAG_K
    use_calibration: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", RoutingMethod.parse(self.method))
        if self.top_k < 1:
            raise InvalidInputError(f"top_k must be at least 1, got {self.top_k}")
        if self.lag_k < 1:
            raise InvalidInputError(f"LAG's k must be at least 1, got {self.lag_k}")

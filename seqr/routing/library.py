"""Stacked factors of one module: the candidate adapters' Q, R, mu and sigma as single tensors.

Every router reads its adapters from one :class:`StackedFactors`, built once from the candidate
set and nothing else, so an adapter outside that set cannot influence a score, not even through a
tie. Dimensions used throughout this package: N candidates, n input features, m output features,
r rank, T tokens.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from seqr.errors import InvalidInputError
from seqr.routing.factors import ModuleFactors, all_finite

logger = logging.getLogger(__name__)


def check_finite(name: str, tensor: torch.Tensor) -> None:
    """Raise :class:`InvalidInputError` when ``tensor`` contains a NaN or an Inf."""
    if not torch.isfinite(tensor).all():
        raise InvalidInputError(f"{name} contains NaN or Inf values; re-export or retrain it")


def check_shared_a(a: torch.Tensor) -> None:
    if a.ndim != 2:
        raise InvalidInputError(f"the shared A must be a 2-D (r, n) matrix, got shape {tuple(a.shape)}")
    if a.shape[0] > a.shape[1]:
        raise InvalidInputError(
            f"the shared A has shape {tuple(a.shape)}: its rank r={a.shape[0]} exceeds n={a.shape[1]}; "
            "pass A as (rank, in_features)"
        )
    check_finite("the shared A", a)


def _calibration(
    mu: torch.Tensor | Sequence[float] | None,
    sigma: torch.Tensor | Sequence[float] | None,
    count: int,
    chosen: Sequence[int],
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Return mu and sigma of the ``chosen`` adapters as float32 (len(chosen),) tensors on the CPU."""
    if (mu is None) != (sigma is None):
        raise InvalidInputError("pass both mu and sigma for calibrated scores, or neither for raw norms")
    if mu is None or sigma is None:
        return None, None
    index = torch.tensor(list(chosen), dtype=torch.long)
    picked: list[torch.Tensor] = []
    for name, values in (("mu", mu), ("sigma", sigma)):
        flat = torch.as_tensor(values, dtype=torch.float32).detach().reshape(-1).cpu()
        if flat.numel() != count:
            raise InvalidInputError(f"{name} has {flat.numel()} values for {count} adapters; pass one per adapter")
        subset = flat[index]
        check_finite(name, subset)
        picked.append(subset)
    mu_t, sigma_t = picked
    bad = torch.nonzero(sigma_t <= 0).flatten()
    if bad.numel():
        position = int(bad[0])
        raise InvalidInputError(
            f"sigma of adapter {chosen[position]} is {float(sigma_t[position])}, not positive; recalibrate that "
            "adapter (sigma must be > 0)"
        )
    return mu_t, sigma_t


@dataclass(frozen=True)
class StackedFactors:
    """The shared A and the candidates' factors of one module, in float32 on one device.

    ``a`` is (r, n). ``q`` is (N, m, r) with orthonormal columns per adapter, and ``r`` is
    (N, r, r) upper triangular. ``mu`` and ``sigma`` are (N,), or both None for raw norms.
    """

    a: torch.Tensor
    q: torch.Tensor
    r: torch.Tensor
    mu: torch.Tensor | None = None
    sigma: torch.Tensor | None = None

    def __post_init__(self) -> None:
        # Shapes only: values are checked where factors enter (from_b, the codec, stack checks).
        shapes = f"A {tuple(self.a.shape)}, Q {tuple(self.q.shape)}, R {tuple(self.r.shape)}"
        if self.a.ndim != 2 or self.q.ndim != 3 or self.r.ndim != 3:
            raise InvalidInputError(f"stacked factors need A (r, n), Q (N, m, r) and R (N, r, r); got {shapes}")
        adapters, rank = int(self.q.shape[0]), int(self.a.shape[0])
        if self.q.shape[2] != rank or tuple(self.r.shape) != (adapters, rank, rank):
            raise InvalidInputError(
                f"stacked factors do not fit together: {shapes}; Q must be (N, m, {rank}) and R ({adapters}, {rank}, {rank})"
            )
        for name, values in (("mu", self.mu), ("sigma", self.sigma)):
            if values is not None and tuple(values.shape) != (adapters,):
                raise InvalidInputError(f"{name} has shape {tuple(values.shape)}; pass one value per adapter, ({adapters},)")

    @property
    def num_adapters(self) -> int:
        return int(self.q.shape[0])

    @property
    def rank(self) -> int:
        return int(self.a.shape[0])

    @property
    def in_features(self) -> int:
        return int(self.a.shape[1])

    @property
    def out_features(self) -> int:
        return int(self.q.shape[1])

    @property
    def is_calibrated(self) -> bool:
        return self.mu is not None

    @property
    def device(self) -> torch.device:
        return self.a.device

    def without_calibration(self) -> StackedFactors:
        return StackedFactors(a=self.a, q=self.q, r=self.r)

    def b(self) -> torch.Tensor:
        """Rebuild every B = Q R as one (N, m, r) tensor."""
        return torch.bmm(self.q, self.r)

    def to(self, device: torch.device | str) -> StackedFactors:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        return StackedFactors(a=self.a.to(device), q=self.q.to(device), r=self.r.to(device), mu=move(self.mu), sigma=move(self.sigma))

    @classmethod
    def from_b(
        cls,
        a: torch.Tensor,
        b: torch.Tensor | Sequence[torch.Tensor],
        *,
        mu: torch.Tensor | Sequence[float] | None = None,
        sigma: torch.Tensor | Sequence[float] | None = None,
        candidates: Sequence[int] | None = None,
    ) -> StackedFactors:
        """Validate A and the B matrices, factor each B = Q R and stack them.

        ``b`` is a sequence of (m, r) tensors or one (N, m, r) tensor; ``mu`` and ``sigma`` hold
        one value per entry of ``b``. With ``candidates`` (indices into ``b``) only those adapters
        are validated, factored and stacked, in that order; the others are never read.
        """
        check_shared_a(a)
        count = int(b.shape[0]) if isinstance(b, torch.Tensor) else len(b)
        if isinstance(b, torch.Tensor) and b.ndim != 3:
            raise InvalidInputError(f"B must be an (N, m, r) tensor or a sequence of (m, r) tensors, got shape {tuple(b.shape)}")
        chosen = list(range(count)) if candidates is None else _check_candidates(candidates, count)
        if not chosen:
            raise InvalidInputError("the candidate set is empty; pass at least one adapter to route among")
        mu_t, sigma_t = _calibration(mu, sigma, count, chosen)

        rank, n = int(a.shape[0]), int(a.shape[1])
        first_m: int | None = None
        qs: list[torch.Tensor] = []
        rs: list[torch.Tensor] = []
        for i in chosen:
            b_i = b[i]
            if b_i.ndim != 2 or b_i.shape[1] != rank:
                raise InvalidInputError(
                    f"B[{i}] has shape {tuple(b_i.shape)} but A has rank r={rank}; every B must be (m, {rank})"
                )
            if first_m is None:
                first_m = int(b_i.shape[0])
            elif b_i.shape[0] != first_m:
                raise InvalidInputError(
                    f"B[{i}] has m={b_i.shape[0]} output features but B[{chosen[0]}] has m={first_m}; "
                    "all adapters of a module must have the same m"
                )
            check_finite(f"B[{i}]", b_i)
            factors = ModuleFactors.from_b(b_i)
            qs.append(factors.q)
            rs.append(factors.r)
        device = a.device
        return cls(
            a=a.detach().to(torch.float32).contiguous(),
            q=stack_q(qs).to(device),  # (N, m, r)
            r=torch.stack(rs).to(device),  # (N, r, r)
            mu=None if mu_t is None else mu_t.to(device),
            sigma=None if sigma_t is None else sigma_t.to(device),
        )

    @classmethod
    def from_module_factors(
        cls,
        a: torch.Tensor,
        factors: Sequence[ModuleFactors],
        *,
        names: Sequence[str] | None = None,
        use_calibration: bool = True,
        device: torch.device | str | None = None,
        out_features: int | None = None,
        check_values: bool = True,
    ) -> StackedFactors:
        """Stack already factored adapters of one module, checking shapes and values.

        ``names`` label the adapters in error messages. Calibration is used when every adapter
        has it and ``use_calibration`` is set. A mix of calibrated and uncalibrated adapters is
        rejected, because their scores would not be comparable. ``check_values=False`` skips the
        NaN and Inf check of Q and R, for factors the caller has checked already (the registry's
        codec checks every adapter it decodes); shapes and calibration are checked either way.
        """
        check_shared_a(a)
        if not factors:
            raise InvalidInputError("the candidate set is empty; pass at least one adapter to route among")
        labels = list(names) if names is not None else [f"adapter {i}" for i in range(len(factors))]
        rank = int(a.shape[0])
        expected_m = out_features if out_features is not None else factors[0].out_features
        for label, f in zip(labels, factors, strict=True):
            if f.r.shape != (rank, rank) or f.q.ndim != 2 or f.q.shape[1] != rank:
                raise InvalidInputError(
                    f"{label} has rank {f.rank} (Q {tuple(f.q.shape)}, R {tuple(f.r.shape)}) but the shared A has "
                    f"rank r={rank}; the adapter was trained for another library"
                )
            if f.out_features != expected_m:
                raise InvalidInputError(
                    f"{label} has m={f.out_features} output features but the module has {expected_m}; "
                    "the adapter was trained for another base model"
                )

        calibrated = [f.mu is not None and f.sigma is not None for f in factors]
        mu_t: torch.Tensor | None = None
        sigma_t: torch.Tensor | None = None
        if use_calibration and all(calibrated):
            mu_t, sigma_t = _calibration(
                [float(f.mu) for f in factors if f.mu is not None],
                [float(f.sigma) for f in factors if f.sigma is not None],
                len(factors),
                range(len(factors)),
            )
        elif use_calibration and any(calibrated):
            missing = [label for label, ok in zip(labels, calibrated, strict=True) if not ok]
            raise InvalidInputError(
                f"adapters {missing[:5]} have no calibration statistics while others do; calibrate them "
                "or route on raw norms with use_calibration=False"
            )

        target = torch.device(device) if device is not None else a.device
        q = stack_q([f.q.to(torch.float32) for f in factors]).to(target)  # (N, m, r)
        r = torch.stack([f.r.to(torch.float32) for f in factors]).to(target)  # (N, r, r)
        if check_values:
            _check_stacked_finite(labels, q, r)
        return cls(
            a=a.detach().to(device=target, dtype=torch.float32).contiguous(),
            q=q,
            r=r,
            mu=None if mu_t is None else mu_t.to(target),
            sigma=None if sigma_t is None else sigma_t.to(target),
        )


def _check_stacked_finite(labels: Sequence[str], q: torch.Tensor, r: torch.Tensor) -> None:
    """Check the stacked Q (N, m, r) and R (N, r, r) with one reduction each; name the first bad adapter."""
    if all_finite(q) and all_finite(r):
        return
    for label, q_i, r_i in zip(labels, q, r, strict=True):
        check_finite(f"{label} (Q)", q_i)
        check_finite(f"{label} (R)", r_i)


def stack_q(qs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Stack (m, r) Q factors into an (N, m, r) view of a contiguous (N, r, m) tensor.

    Routed updates read each Q transposed, r rows of m, so that is the layout kept in memory.
    """
    return torch.stack([q.T for q in qs]).transpose(1, 2)


def _check_candidates(candidates: Sequence[int], count: int) -> list[int]:
    chosen = [int(i) for i in candidates]
    for i in chosen:
        if not 0 <= i < count:
            raise InvalidInputError(f"candidate index {i} is outside the library of {count} adapters")
    if len(set(chosen)) != len(chosen):
        raise InvalidInputError(f"the candidate set {chosen[:10]} lists an adapter twice; list each once")
    return chosen

"""Load timings of a routed model, split into resolve, decrypt, device transfer, attach and first forward."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class LoadTimings:
    """Seconds spent in each step of the last (re)load of a model's adapters, and what was loaded.

    ``resolve_seconds``: re-checking the caller and listing its authorised adapter versions.
    ``decrypt_seconds``: reading and decrypting the versions missing from the device cache.
    ``transfer_seconds``: moving their Q and R to the model's device.
    ``attach_seconds``: stacking the routing tensors of every adapted module and attaching the
    routed layers; nothing is stacked when another model already routes among the same versions.
    ``first_forward_seconds``: from the start of the first request after the load to the end of
    its first model forward (for ``generate``, the prompt pass that yields the first new token);
    None until that request has run. ``decrypted`` counts versions decrypted by this load and
    ``cached`` those the device cache already held. ``adapter_bytes`` is the size of the Q and R
    tensors of the attached adapters; the device cache and the routed layers share one copy of them.
    """

    adapters: int = 0
    decrypted: int = 0
    cached: int = 0
    adapter_bytes: int = 0
    resolve_seconds: float = 0.0
    decrypt_seconds: float = 0.0
    transfer_seconds: float = 0.0
    attach_seconds: float = 0.0
    first_forward_seconds: float | None = None

    @property
    def total_seconds(self) -> float:
        """Sum of every step measured so far (the first forward counts once it has run)."""
        steps = self.resolve_seconds + self.decrypt_seconds + self.transfer_seconds + self.attach_seconds
        return steps + (self.first_forward_seconds or 0.0)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "total_seconds": self.total_seconds}

    def describe(self) -> str:
        """Return one line per step, for ``--verbose`` output."""
        first = "not run yet" if self.first_forward_seconds is None else f"{self.first_forward_seconds * 1e3:.1f} ms"
        return "\n".join([
            f"adapters: {self.adapters} ({self.decrypted} decrypted, {self.cached} from the device cache), "
            f"Q and R {self.adapter_bytes / 2**20:.2f} MiB",
            f"resolve:       {self.resolve_seconds * 1e3:10.1f} ms",
            f"decrypt:       {self.decrypt_seconds * 1e3:10.1f} ms",
            f"transfer:      {self.transfer_seconds * 1e3:10.1f} ms",
            f"attach:        {self.attach_seconds * 1e3:10.1f} ms",
            f"first forward: {first:>13}",
        ])

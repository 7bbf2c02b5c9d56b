"""Trainable shared-A LoRA layers: A is a frozen buffer from the library, only B is a parameter.

y = W x + scaling * B (A dropout(x)), with dropout on the input as in LoRA (Hu et al. 2021). B
starts at zero, so an attached, untrained adapter leaves the model's output unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn

from seqr.errors import InvalidInputError, ModelError
from seqr.training.library import Library


class SharedALoRALinear(nn.Module):
    """An ``nn.Linear`` plus a LoRA update whose A (r, n) is frozen and whose B (m, r) trains."""

    def __init__(self, base: nn.Linear, a: torch.Tensor, *, scaling: float, dropout: float = 0.0) -> None:
        super().__init__()
        if a.ndim != 2 or a.shape[1] != base.in_features:
            raise InvalidInputError(
                f"A has shape {tuple(a.shape)} but the module takes {base.in_features} inputs; "
                "the library was made for another model"
            )
        if not 0.0 <= dropout < 1.0:
            raise InvalidInputError(f"dropout must be in [0, 1), got {dropout}")
        self.base = base
        self.register_buffer("a", a.detach().to(torch.float32).clone(), persistent=False)  # (r, n)
        self.b = nn.Parameter(torch.zeros(base.out_features, a.shape[0], dtype=torch.float32))  # (m, r)
        self.scaling = scaling
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (..., n) -> (..., m)
        z = self.dropout(x) @ self.a.to(x.dtype).T  # (..., r)
        return self.base(x) + self.scaling * (z @ self.b.to(z.dtype).T)


def _parent_and_child(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, child = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), child


@contextmanager
def attached_lora(
    model: nn.Module, library: Library, *, dropout: float = 0.0, b: Mapping[str, torch.Tensor] | None = None
) -> Iterator[dict[str, SharedALoRALinear]]:
    """Replace every library module of ``model`` with a :class:`SharedALoRALinear` for the block.

    ``b`` optionally sets each module's B (m, r). The original ``nn.Linear`` modules are put back
    when the block exits, also on an exception, so the model is left as it was.
    """
    layers: dict[str, SharedALoRALinear] = {}
    originals: dict[str, nn.Linear] = {}
    try:
        for name in library.module_names:
            try:
                base = model.get_submodule(name)
            except AttributeError as error:
                raise ModelError(f"the model has no module {name!r}; the library was made for another model") from error
            if not isinstance(base, nn.Linear):
                raise ModelError(f"module {name!r} is a {type(base).__name__}, not an nn.Linear")
            layer = SharedALoRALinear(base, library.a[name], scaling=library.scaling, dropout=dropout)
            layer.to(base.weight.device)
            if b is not None:
                if tuple(b[name].shape) != tuple(layer.b.shape):
                    raise InvalidInputError(
                        f"B for {name} has shape {tuple(b[name].shape)}, expected {tuple(layer.b.shape)}"
                    )
                with torch.no_grad():
                    layer.b.copy_(b[name])
            parent, child = _parent_and_child(model, name)
            originals[name] = base
            setattr(parent, child, layer)
            layers[name] = layer
        yield layers
    finally:
        for name, base in originals.items():
            parent, child = _parent_and_child(model, name)
            setattr(parent, child, base)

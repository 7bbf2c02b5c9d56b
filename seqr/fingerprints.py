"""The one fingerprint of a set of named tensors, used for the shared A everywhere.

The registry stores it with each library, and training and PEFT files record it with each
adapter, so the two can be compared directly.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

import torch


def fingerprint_tensors(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes in name order, independent of file layout."""
    digest = hashlib.sha256(b"seqr-tensors-v1")
    for name in sorted(tensors):
        tensor = tensors[name].detach().contiguous().cpu()
        header = json.dumps([name, str(tensor.dtype), list(tensor.shape)]).encode()
        digest.update(len(header).to_bytes(8, "big") + header)
        raw = tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
        digest.update(len(raw).to_bytes(8, "big") + raw)
    return digest.hexdigest()

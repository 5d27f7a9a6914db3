"""Student weights on the wire: a safetensors byte string of an HF-format state dict.

The trainer serialises once per sync (`state_dict_to_bytes`); every rollout engine loads the
same bytes in place (torch: `load_state_dict`; vLLM: `vllm_ext.WeightSyncExtension`). Bytes
travel through Ray's object store and through vLLM's `collective_rpc`, where torch tensors
cannot (environment.md). `weights_digest` is the one hash the trainer ranks, the rollout
workers and the vLLM worker compare weights with.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import torch
from safetensors.torch import load as _load
from safetensors.torch import save as _save


def state_dict_to_bytes(state_dict: dict[str, torch.Tensor]) -> bytes:
    """Serialise an HF-named state dict (e.g. `model.state_dict()`) as safetensors bytes.

    Tensors are copied to contiguous CPU memory first: safetensors refuses tensors that share
    storage, which tied embeddings do.
    """
    return _save({name: t.detach().to("cpu").contiguous().clone() for name, t in state_dict.items()})


def bytes_to_state_dict(blob: bytes) -> dict[str, torch.Tensor]:
    return _load(blob)


def weights_digest(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """A short hash of named tensors' values (in name order, as float32), to compare weights across processes."""
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in sorted(named_tensors, key=lambda item: item[0]):
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]

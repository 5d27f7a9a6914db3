"""vLLM worker extension: in-place weight reload for rollout engines.

vLLM mixes this class into its worker when the engine is built with
`worker_extension_cls="distill_ray.rollout.vllm_ext.WeightSyncExtension"`; the engine side
calls its methods through `LLM.collective_rpc`, which `VllmEngine` wraps in typed methods.
Methods here run inside vLLM's worker process, where `self` is the worker (it has
`reload_weights` and `model_runner`).

CPU (tested): the trainer's state dict arrives as safetensors bytes (`weights.state_dict_to_bytes`)
and is loaded with the worker's own `reload_weights(weights_iterator=..., is_checkpoint_format=True)`,
which maps HF checkpoint names onto vLLM's fused parameters (qkv_proj, gate_up_proj) in place.
Calling `model.load_weights` directly fails on CPU, and torch tensors do not survive
`collective_rpc`, hence bytes.

GPU (TODO, not testable on the CPU machines this was written on): at scale the bytes path
costs a host copy per sync. vLLM ships NCCL / CUDA-IPC weight transfer engines
(`vllm.distributed.weight_transfer`): build the engine with
`weight_transfer_config=WeightTransferConfig(backend="nccl")`, join the trainer's rank 0 to
each engine's workers with `collective_rpc("init_weight_transfer_engine", kwargs={"init_info": ...})`,
then per sync `start_weight_update` -> `update_weights` (trainer broadcasts each parameter) ->
`finish_weight_update`. `VllmEngine` keeps the version counter the same way for both paths;
only `VllmEngine.load_weights` would change.
"""

from __future__ import annotations

from distill_ray.rollout.weights import weights_digest


class WeightSyncExtension:
    """Mixed into vLLM's worker class; every method runs in the worker process."""

    def load_safetensors_bytes(self, blob: bytes) -> int:
        """Reload the model in place from an HF-format safetensors byte string; returns tensors read."""
        from safetensors.torch import load

        tensors = load(blob)
        self.reload_weights(weights_iterator=iter(tensors.items()), is_checkpoint_format=True)
        return len(tensors)

    def weights_fingerprint(self) -> str:
        """A short hash of every parameter as the worker holds it (to check that a reload took)."""
        return weights_digest(self.model_runner.get_model().named_parameters())

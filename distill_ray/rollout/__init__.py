"""Rollout: where student (and SWITCH) sequences are generated.

    sampling.py     SamplingConfig; position-keyed draws (seed, sequence, position, model) -> token
    engines.py      TorchEngine (exact reference) and VllmEngine behind one interface
    kv.py, decode.py  the torch backend's ragged KV cache and decoding pieces
    switch_rule.py  who writes token t (JSD vs a decaying threshold)
    switch.py       SwitchGenerator: exact SWITCH, sequential reference and drafted
    topk_jsd.py     the SWITCH divergence from top-k log-probs (+ tail bucket)
    switch_topk.py  TopkSwitchGenerator: SWITCH with a vLLM student and a remote top-k teacher
    weights.py      state dict <-> safetensors bytes (weight sync)
    vllm_ext.py     vLLM worker extension: in-place reload from those bytes
    workers.py      RolloutWorker and TeacherScorer Ray actors; EngineConfig, SwitchParams

Nothing here imports vLLM at module level; only building a VllmEngine does.
"""

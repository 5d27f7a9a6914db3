"""Generation engines behind one interface: `TorchEngine` (transformers/torch) and `VllmEngine`.

Both answer the same calls:

    generate(prompts, sampling, prompt_index) -> RolloutBatch   student samples + their log-probs
    score_topk(sequences, prompt_lens, k) -> (ids, logprobs)     top-k log-probs at response positions
    load_weights(blob, version)                                  in-place reload from safetensors bytes
    policy_version                                               version of the weights in use

and, for top-k SWITCH (`switch_topk`), draft_topk (sample a few tokens after each prefix, with
the top-k at each step) and token_logprobs (log-probs of given response tokens).

The torch engine is the exact reference (and the faster choice for tiny models on CPU, where
vLLM's per-step overhead dominates); vLLM pays off for larger models and on GPUs.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from transformers import PreTrainedModel

from distill_ray.batch import RolloutBatch
from distill_ray.errors import DistillError
from distill_ray.rollout.decode import ResponseBuffer, expand_prompts, left_pad, prefill, stop_counts
from distill_ray.rollout.kv import SlotCache
from distill_ray.rollout.sampling import STUDENT_STREAM, SamplingConfig, keyed_uniform, sample_tokens
from distill_ray.rollout.weights import bytes_to_state_dict



class RolloutEngine(Protocol):
    policy_version: int

    def generate(
        self, prompts: list[list[int]], sampling: SamplingConfig, prompt_index: list[int] | None = None
    ) -> RolloutBatch: ...

    def score_topk(
        self, sequences: list[list[int]], prompt_lens: list[int], k: int
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def load_weights(self, blob: bytes, version: int) -> None: ...


def _check_sequences(sequences: list[list[int]], prompt_lens: list[int]) -> list[int]:
    """Response lengths; each prompt must be non-empty and no longer than its sequence."""
    if len(sequences) != len(prompt_lens):
        raise DistillError(f"score_topk: {len(sequences)} sequences but {len(prompt_lens)} prompt lengths")
    for i, (seq, p) in enumerate(zip(sequences, prompt_lens)):
        if not 1 <= p <= len(seq):
            raise DistillError(f"score_topk: sequence {i} has {len(seq)} tokens but prompt length {p}")
    return [len(s) - p for s, p in zip(sequences, prompt_lens)]


def _config_int(model_dir: str | Path, name: str) -> int | None:
    """An integer field of the model's config.json (the first, for a list such as several EOS ids)."""
    value = json.loads((Path(model_dir) / "config.json").read_text()).get(name)
    return value[0] if isinstance(value, list) else value


@dataclass
class Draft:
    """Tokens one engine sampled after a prefix, with its top-k at each step (for top-k SWITCH)."""

    tokens: list[int]  # sampled tokens (the last may be EOS)
    logprobs: list[float]  # raw log-probs of those tokens
    topk_ids: torch.Tensor  # [n, k] int64, the engine's top-k ids at each step
    topk_logprobs: torch.Tensor  # [n, k] float32


# ====================================================================== torch


class TorchEngine:
    """Plain transformers/torch generation with a KV cache and position-keyed sampling."""

    def __init__(
        self,
        model: str | Path | PreTrainedModel,
        *,
        eos_token_id: int | None = None,
        pad_token_id: int = 0,
        device: str = "cpu",
        dtype: str = "float32",
        score_batch_size: int = 32,
    ):
        if isinstance(model, (str, Path)):
            from distill_ray.models.build import DTYPES, load_causal_lm

            model = load_causal_lm(model, dtype=DTYPES[dtype])
        self.model = model.to(device).eval()
        self.eos_token_id = model.config.eos_token_id if eos_token_id is None else eos_token_id
        if isinstance(self.eos_token_id, list):
            self.eos_token_id = self.eos_token_id[0]
        self.pad_token_id = pad_token_id
        self.vocab_size = model.config.vocab_size
        self.score_batch_size = score_batch_size
        self.policy_version = 0

    # ------------------------------------------------------------------ generation

    def generate(
        self, prompts: list[list[int]], sampling: SamplingConfig, prompt_index: list[int] | None = None
    ) -> RolloutBatch:
        start = time.perf_counter()
        rows, index, keys = expand_prompts(prompts, prompt_index, sampling.samples_per_prompt)
        prompt_ids, prompt_mask = left_pad(rows, self.pad_token_id)
        B = len(rows)
        out, _ = self._decode(
            prompt_ids, prompt_mask, keys, torch.zeros(B, dtype=torch.long),
            torch.full((B,), sampling.max_new_tokens), sampling, topk=0,
        )
        metrics = {
            "timing/generate": time.perf_counter() - start,
            "tokens/response": float(out.lengths.sum()),
            "tokens/prompt": float(prompt_mask.sum()),
        }
        return out.to_batch(prompt_ids, prompt_mask, index, self.policy_version, metrics, self.pad_token_id)

    def draft_topk(
        self,
        prefixes: list[list[int]],
        keys: list[int],
        positions: list[int],
        max_tokens: list[int],
        sampling: SamplingConfig,
        k: int,
    ) -> list[Draft]:
        """Sample up to max_tokens[b] tokens after each prefix (stopping at EOS), with the top-k at each step.

        Row b's draw at step j is keyed by (sampling.seed, keys[b], positions[b] + j): the same draw
        `generate` makes at response position positions[b] + j.
        """
        prompt_ids, prompt_mask = left_pad(prefixes, self.pad_token_id)
        out, (top_ids, top_logp) = self._decode(
            prompt_ids, prompt_mask, torch.as_tensor(keys), torch.as_tensor(positions),
            torch.as_tensor(max_tokens), sampling, topk=k,
        )
        drafts = []
        for b, n in enumerate(out.lengths.tolist()):
            drafts.append(Draft(out.tokens[b, :n].tolist(), out.logprobs[b, :n].tolist(), top_ids[b, :n], top_logp[b, :n]))
        return drafts

    @torch.inference_mode()
    def _decode(
        self,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        keys: torch.Tensor,
        start: torch.Tensor,
        room: torch.Tensor,
        sampling: SamplingConfig,
        topk: int,
    ) -> tuple[ResponseBuffer, tuple[torch.Tensor, torch.Tensor] | None]:
        """The decoding loop: rows [B] start at response position start[b] and may add room[b] tokens."""
        B = prompt_ids.shape[0]
        L = int(room.max())
        cache = SlotCache(self.model, B)
        pending = prefill([cache], prompt_ids, prompt_mask)
        out = ResponseBuffer(B, L)
        top_ids = torch.zeros((B, L, topk), dtype=torch.long)
        top_logp = torch.zeros((B, L, topk), dtype=torch.float32)
        active = torch.arange(B)
        for step in range(L):
            logits = cache.feed(pending[:, None], last_only=True)[:, 0]  # [A, V]
            u = keyed_uniform(sampling.seed, keys[active], start[active] + step, STUDENT_STREAM)
            token = sample_tokens(logits, u, sampling.temperature, sampling.top_p).cpu()
            logp = logits.log_softmax(-1)
            if topk:
                values, ids = logp.topk(topk, dim=-1)
                top_ids[active, step], top_logp[active, step] = ids.cpu(), values.cpu()
            counts, finished = stop_counts(
                token[:, None], torch.ones_like(active), room[active] - step, self.eos_token_id
            )
            chosen = logp.gather(1, token.to(logp.device)[:, None])
            out.write(active, token[:, None], chosen, torch.zeros_like(chosen, dtype=torch.bool), counts)
            keep = (~finished).nonzero().squeeze(1)
            if len(keep) < len(active):
                cache.select_rows(keep)
            active, pending = active[keep], token[keep]
            if not len(active):
                break
        return out, ((top_ids, top_logp) if topk else None)

    # ------------------------------------------------------------------ scoring

    @torch.inference_mode()
    def score_logprobs(self, sequences: list[list[int]], prompt_lens: list[int]) -> torch.Tensor:
        """Exact log-probabilities over the whole vocabulary at every response position.

        Returns float32 [N, R, V] (R = longest response); row n, position t is the distribution
        that predicts response token t of sequence n. Padding positions are 0.
        """
        resp_lens = _check_sequences(sequences, prompt_lens)
        R = max(resp_lens, default=0)
        V = self.model.config.vocab_size
        out = torch.zeros((len(sequences), R, V), dtype=torch.float32)
        for lo in range(0, len(sequences), self.score_batch_size):
            chunk = range(lo, min(lo + self.score_batch_size, len(sequences)))
            L = max(len(sequences[i]) for i in chunk)
            ids = torch.full((len(chunk), L), self.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), L), dtype=torch.long)
            for row, i in enumerate(chunk):
                ids[row, : len(sequences[i])] = torch.as_tensor(sequences[i])
                mask[row, : len(sequences[i])] = 1
            device = next(self.model.parameters()).device
            logp = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float().log_softmax(-1)
            for row, i in enumerate(chunk):
                p, r = prompt_lens[i], resp_lens[i]
                out[i, :r] = logp[row, p - 1 : p - 1 + r].cpu()  # logits at p-1+t predict token p+t
        return out

    def token_logprobs(self, sequences: list[list[int]], prompt_lens: list[int]) -> list[list[float]]:
        """Log-probability of every response token of every sequence."""
        full = self.score_logprobs(sequences, prompt_lens)
        return [
            full[n, : len(s) - p].gather(1, torch.as_tensor(s[p:])[:, None])[:, 0].tolist()
            for n, (s, p) in enumerate(zip(sequences, prompt_lens))
        ]

    def score_topk(self, sequences: list[list[int]], prompt_lens: list[int], k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k (ids [N, R, k] int64, log-probs [N, R, k] float32) at every response position,
        sorted by decreasing probability; padding positions are 0."""
        full = self.score_logprobs(sequences, prompt_lens)
        values, ids = full.topk(k, dim=-1)
        resp_lens = torch.as_tensor([len(s) - p for s, p in zip(sequences, prompt_lens)])
        pad = torch.arange(full.shape[1])[None, :] >= resp_lens[:, None]
        return ids.masked_fill(pad[..., None], 0), values.masked_fill(pad[..., None], 0.0)

    # ------------------------------------------------------------------ weights

    def load_state_dict(self, state_dict: dict[str, torch.Tensor], version: int) -> None:
        missing, unexpected = self.model.load_state_dict(state_dict, strict=False)
        tied = {"lm_head.weight"} if getattr(self.model.config, "tie_word_embeddings", False) else set()
        if unexpected or set(missing) - tied:
            raise DistillError(
                f"load_weights: state dict does not fit the model (missing {sorted(missing)[:3]}, "
                f"unexpected {sorted(unexpected)[:3]})"
            )
        self.policy_version = version

    def load_weights(self, blob: bytes, version: int) -> None:
        """Replace the weights in place from safetensors bytes (`weights.state_dict_to_bytes`)."""
        self.load_state_dict(bytes_to_state_dict(blob), version)


# ====================================================================== vLLM


def in_process_vllm() -> None:
    """Run the next vLLM `LLM` built in this process with its engine core in this process
    (`VLLM_ENABLE_V1_MULTIPROCESSING=0`; a user's own value wins).

    By default vLLM spawns an engine-core and a worker process, each importing torch and vLLM
    again: on these 2 cores a tiny model's engine builds in 42 s that way and in 12 s in-process,
    and decodes no slower (16 prompts x 64 tokens: 0.042-0.045 s a batch spawned, 0.028-0.030 s
    in-process). Killing the process leaves no orphaned `VLLM::` processes either. Tensor
    parallelism still starts its own workers.
    """
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


class VllmEngine:
    """vLLM's offline `LLM` with token-id prompts and in-place weight reload.

    Built inside the process that uses it (a Ray actor), engine core included: start-up is about
    12 s on CPU for the tiny models.
    On CPU, set VLLM_CPU_OMP_THREADS_BIND (e.g. "0-1") in that process's environment before
    building (the Ray actor's runtime_env does it; see `workers.actor_env`).
    """

    def __init__(
        self,
        model_dir: str | Path,
        *,
        eos_token_id: int | None = None,
        pad_token_id: int = 0,
        max_logprobs: int = 64,
        kv_cache_gib: float | None = 1.0,
        gpu_memory_utilization: float = 0.9,
        max_model_len: int | None = None,
        dtype: str = "float32",
        enforce_eager: bool = True,
        tensor_parallel_size: int = 1,
        seed: int = 0,
    ):
        in_process_vllm()
        from vllm import LLM

        self.model_dir = str(model_dir)
        self.eos_token_id = _config_int(model_dir, "eos_token_id") if eos_token_id is None else eos_token_id
        self.pad_token_id = pad_token_id
        self.vocab_size = _config_int(model_dir, "vocab_size")
        self.max_logprobs = max_logprobs
        self.policy_version = 0
        kv = {"kv_cache_memory_bytes": int(kv_cache_gib * 2**30)} if kv_cache_gib else {}
        self.llm = LLM(
            model=self.model_dir,
            skip_tokenizer_init=True,
            worker_extension_cls="distill_ray.rollout.vllm_ext.WeightSyncExtension",
            max_logprobs=max_logprobs,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            dtype=dtype,
            enforce_eager=enforce_eager,
            tensor_parallel_size=tensor_parallel_size,
            seed=seed,
            **kv,
        )

    @staticmethod
    def _request_seed(seed: int, key: int, position: int = 0) -> int:
        # one seed per (row, start position): a row's sample does not depend on its batch
        return int(keyed_uniform(seed, torch.tensor([key]), torch.tensor([position]), 2)[0] * (2**31 - 1))

    def generate(
        self, prompts: list[list[int]], sampling: SamplingConfig, prompt_index: list[int] | None = None
    ) -> RolloutBatch:
        from vllm import SamplingParams

        start = time.perf_counter()
        rows, index, keys = expand_prompts(prompts, prompt_index, sampling.samples_per_prompt)
        params = [
            SamplingParams(
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                max_tokens=sampling.max_new_tokens,
                seed=self._request_seed(sampling.seed, int(key)),
                logprobs=0,  # the sampled token's log-prob (raw: before temperature / top-p)
                detokenize=False,
                stop_token_ids=[self.eos_token_id] if self.eos_token_id is not None else None,
            )
            for key in keys
        ]
        outputs = self.llm.generate([{"prompt_token_ids": p} for p in rows], params, use_tqdm=False)
        responses, logprobs = [], []
        for out in outputs:
            completion = out.outputs[0]
            ids = list(completion.token_ids)
            responses.append(ids)
            logprobs.append([completion.logprobs[t][tok].logprob for t, tok in enumerate(ids)])
        metrics = {
            "timing/generate": time.perf_counter() - start,
            "tokens/response": float(sum(len(r) for r in responses)),
            "tokens/prompt": float(sum(len(p) for p in rows)),
        }
        return RolloutBatch.from_lists(
            rows, responses, logprobs, index.tolist(),
            policy_version=self.policy_version, metrics=metrics, pad_id=self.pad_token_id,
        )

    def draft_topk(
        self,
        prefixes: list[list[int]],
        keys: list[int],
        positions: list[int],
        max_tokens: list[int],
        sampling: SamplingConfig,
        k: int,
    ) -> list[Draft]:
        """Sample up to max_tokens[b] tokens after each prefix (stopping at EOS), with vLLM's top-k at each step.

        Each request's seed is a function of (sampling.seed, keys[b], positions[b]), so a row drafted
        again from the same prefix gets the same tokens (vLLM's own sampler, not the torch draws).
        """
        from vllm import SamplingParams

        if k > self.max_logprobs:
            raise DistillError(f"draft_topk: k={k} exceeds the engine's max_logprobs={self.max_logprobs}")
        params = [
            SamplingParams(
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                max_tokens=n,
                seed=self._request_seed(sampling.seed, key, position),
                logprobs=k,
                detokenize=False,
                stop_token_ids=[self.eos_token_id] if self.eos_token_id is not None else None,
            )
            for key, position, n in zip(keys, positions, max_tokens)
        ]
        outputs = self.llm.generate([{"prompt_token_ids": p} for p in prefixes], params, use_tqdm=False)
        drafts = []
        for out in outputs:
            completion = out.outputs[0]
            tokens = list(completion.token_ids)
            ids = torch.zeros((len(tokens), k), dtype=torch.long)
            values = torch.zeros((len(tokens), k), dtype=torch.float32)
            chosen = []
            for t, tok in enumerate(tokens):
                step = completion.logprobs[t]
                chosen.append(step[tok].logprob)
                top = sorted((lp.rank, tid, lp.logprob) for tid, lp in step.items() if lp.rank <= k)
                ids[t, : len(top)] = torch.tensor([e[1] for e in top])
                values[t, : len(top)] = torch.tensor([e[2] for e in top])
            drafts.append(Draft(tokens, chosen, ids, values))
        return drafts

    def token_logprobs(self, sequences: list[list[int]], prompt_lens: list[int]) -> list[list[float]]:
        """Log-probability of every response token of every sequence (vLLM prompt_logprobs)."""
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=1, detokenize=False)
        outputs = self.llm.generate([{"prompt_token_ids": s} for s in sequences], params, use_tqdm=False)
        # prompt_logprobs[j] always holds the actual token j, whatever its rank
        return [
            [out.prompt_logprobs[j][seq[j]].logprob for j in range(p, len(seq))]
            for out, seq, p in zip(outputs, sequences, prompt_lens)
        ]

    def score_topk(self, sequences: list[list[int]], prompt_lens: list[int], k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k from vLLM's prompt_logprobs (ids [N, R, k] int64, log-probs [N, R, k] float32),
        sorted by decreasing probability; padding positions are 0."""
        from vllm import SamplingParams

        if k > self.max_logprobs:
            raise DistillError(f"score_topk: k={k} exceeds the engine's max_logprobs={self.max_logprobs}")
        resp_lens = _check_sequences(sequences, prompt_lens)
        R = max(resp_lens, default=0)
        ids = torch.zeros((len(sequences), R, k), dtype=torch.long)
        values = torch.zeros((len(sequences), R, k), dtype=torch.float32)
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=k, detokenize=False)
        outputs = self.llm.generate([{"prompt_token_ids": s} for s in sequences], params, use_tqdm=False)
        for n, out in enumerate(outputs):
            p = prompt_lens[n]
            for t in range(resp_lens[n]):
                # prompt_logprobs[j] predicts token j; it holds the top-k (ranks 1..k) plus the actual token
                entries = [(lp.rank, tok, lp.logprob) for tok, lp in out.prompt_logprobs[p + t].items() if lp.rank <= k]
                entries.sort()
                ids[n, t, : len(entries)] = torch.tensor([e[1] for e in entries])
                values[n, t, : len(entries)] = torch.tensor([e[2] for e in entries])
        return ids, values

    def load_weights(self, blob: bytes, version: int) -> None:
        """Reload the weights in place from safetensors bytes, without restarting the engine."""
        self.llm.collective_rpc("load_safetensors_bytes", args=(blob,))
        # cached prefixes hold keys/values computed with the old weights
        self.llm.reset_prefix_cache()
        self.policy_version = version

    def weights_fingerprint(self) -> str:
        return self.llm.collective_rpc("weights_fingerprint")[0]


"""One learner rank: FSDP2-sharded policy (+ reference, + critic), its optimizer and losses.

A plain class: :mod:`learners.group` wraps it as a Ray actor, and tests or a GPU box without
Ray can drive it directly. Every public method that touches a sharded model is a collective:
all ranks call it together, and each rank runs the same number of forward/backward passes
(ranks with fewer micro-batches run zero-weight repeats) so FSDP2's all-gathers line up.
"""

from __future__ import annotations

import datetime
import math
import socket
import warnings
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist

from learners import checkpoint, losses
from learners.batching import MicroBatch, Samples, at_positions, collate, pack_by_tokens, unpad
from learners.head import chunking_unsupported, final_hidden, token_logprobs
from learners.models import load_critic, load_policy, resolve_dtype, shard
from pipeline.config import RayppoConfig
from pipeline.infra import fault_injection, weight_transport
from pipeline.infra.cpu_allocator import keep_freed_memory

# HF token-classification heads return a view; nothing here modifies model outputs in place,
# which is the only case FSDP2's warning is about.
warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")


# Per-token targets an update may read (see ``_micro_loss``).
UPDATE_KEYS = ("advantages", "old_logprobs", "ref_logprobs", "returns", "old_values")


def free_address() -> tuple[str, int]:
    """This host's address and a free TCP port for the process-group rendezvous."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    try:
        import ray

        host = ray.util.get_node_ip_address()
    except Exception:  # not inside Ray: a single-host run
        host = "127.0.0.1"
    return host, port


class LearnerWorker:
    def __init__(self, cfg: RayppoConfig, rank: int, world_size: int):
        self.cfg = cfg
        self.rank = rank
        self.world_size = world_size
        self.on_gpu = cfg.resources.gpus_per_learner > 0 and torch.cuda.is_available()
        self.device = torch.device("cuda", torch.cuda.current_device()) if self.on_gpu else torch.device("cpu")
        self.algo = cfg.algorithm
        self.use_critic = self.algo.advantage == "gae"
        self.use_reference = self.algo.kl_coef > 0
        self.temperature = cfg.rollout.temperature
        self.skipped_steps = 0
        self.optimizer_steps = 0
        self.critic = self.ref = None

    # ----------------------------------------------------------------- setup
    def address(self) -> tuple[str, int]:
        return free_address()

    def setup(self, master_addr: str, master_port: int, policy_path: Optional[str] = None) -> dict:
        cfg = self.cfg
        if not self.on_gpu:
            torch.set_num_threads(cfg.resources.torch_threads)
            if cfg.resources.cpu_keep_freed_memory:
                keep_freed_memory()
        torch.manual_seed(cfg.learner.seed + self.rank)
        if not dist.is_initialized():  # a caller may already have built the group
            dist.init_process_group(
                backend="nccl" if self.on_gpu else "gloo",
                init_method=f"tcp://{master_addr}:{master_port}",
                rank=self.rank,
                world_size=self.world_size,
                # A collective whose peer died fails after this instead of blocking for good.
                timeout=datetime.timedelta(seconds=cfg.resources.learner_timeout_s),
            )
        path = policy_path or cfg.model.path
        dtype = resolve_dtype(cfg.model.dtype, self.on_gpu)
        trust = cfg.model.trust_remote_code
        self.policy = self._shard(load_policy(path, dtype, trust))
        self.pad_id = self.policy.config.pad_token_id or 0
        self.optimizer, self.scheduler = self._optimizer(self.policy, cfg.learner.lr)
        if self.use_reference:
            self.ref = self._shard(load_policy(cfg.model.path, dtype, trust))
            self.ref.requires_grad_(False)
        if self.use_critic:
            self.critic = self._shard(load_critic(cfg.model.critic_path or path, dtype, trust))
            self.critic_optimizer, self.critic_scheduler = self._optimizer(
                self.critic, cfg.learner.critic_lr
            )
        n_params = sum(p.numel() for p in self.policy.parameters())
        return {"policy_params": n_params, "device": str(self.device)}

    def _shard(self, model: torch.nn.Module) -> torch.nn.Module:
        model.to(self.device)
        alone_on_cpu = self.world_size == 1 and not self.on_gpu
        if alone_on_cpu and not self.cfg.learner.fsdp_single_rank:
            # Nothing to shard or reduce across; gradients and optimizer steps are the same.
            return model
        return shard(model, self.on_gpu, mixed_precision=self.cfg.model.dtype == "auto")

    def _optimizer(self, model: torch.nn.Module, lr: float):
        lc = self.cfg.learner
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=lr, weight_decay=lc.weight_decay, eps=lc.adam_eps, foreach=False
        )
        warmup = lc.warmup_steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
        )
        return optimizer, scheduler

    # ---------------------------------------------------------- micro-batches
    def _plan(self, samples: Samples, budget: int) -> list[list[int]]:
        """Micro-batches of this rank, padded with repeats to the group's largest count."""
        lengths = [len(p) + len(r) for p, r in zip(samples.prompt_ids, samples.response_ids)]
        groups = pack_by_tokens(lengths, budget) if len(samples) else []
        count = torch.tensor([len(groups)], dtype=torch.long)
        dist.all_reduce(count, op=dist.ReduceOp.MAX)
        return groups + [None] * (int(count.item()) - len(groups))

    def _micro(self, samples: Samples, index: Optional[list[int]], fallback: Samples) -> tuple[MicroBatch, float]:
        """The micro-batch for ``index``; a ``None`` slot reuses ``fallback`` with weight 0."""
        # Every micro-batch takes the same layout, so all ranks make the same number of model
        # calls (FSDP2's collectives), whether or not a micro-batch has repeated prompts.
        share = self.cfg.learner.share_prompt_forward
        if index is None:
            return collate(fallback, self.pad_id, self.device, share), 0.0
        return collate(samples.subset(index), self.pad_id, self.device, share), 1.0

    def _logits(self, model, mb: MicroBatch, prompt_once: bool = True) -> torch.Tensor:
        """Logits predicting each response token, ``[b, R, ...]``."""
        if prompt_once and mb.shared is not None:
            return self._prompt_once_logits(model, mb)
        out = model(input_ids=mb.input_ids, attention_mask=mb.attention_mask)
        return at_positions(out.logits, mb.positions).float()

    def _prompt_once_logits(self, model, mb: MicroBatch) -> torch.Tensor:
        s = mb.shared
        # Only each prompt's last position feeds a loss (it predicts response token 0): keep
        # the logits of those positions, not ``[u, P, vocab]``, which is large for real vocabularies.
        keep, column = torch.unique(s.prompt_last, return_inverse=True)
        first = model(input_ids=s.prompt_ids, attention_mask=s.prompt_mask, use_cache=True, logits_to_keep=keep)
        cache = first.past_key_values
        # [u, ...] -> [b, ...]: a differentiable gather, so each prompt's gradient is the sum
        # over its samples, as in the plain layout.
        cache.reorder_cache(s.owner)
        rows = torch.arange(len(column), device=column.device)
        head = first.logits[rows, column][s.owner]
        rest = model(
            input_ids=s.response_inputs,
            attention_mask=s.attention_mask,
            position_ids=s.position_ids,
            past_key_values=cache,
            use_cache=True,
        ).logits
        width = mb.response_ids.shape[1]
        return torch.cat([head[:, None], rest[:, : width - 1]], dim=1).float()

    def _hidden(self, model, mb: MicroBatch) -> torch.Tensor:
        """Final hidden states predicting each response token, ``[b, R, H]`` (the layouts of
        :meth:`_logits`, with the head left to :func:`learners.head.token_logprobs`)."""
        if mb.shared is None:
            hidden, _ = final_hidden(model, input_ids=mb.input_ids, attention_mask=mb.attention_mask)
            return at_positions(hidden, mb.positions)
        s = mb.shared
        prompt_hidden, first = final_hidden(model, input_ids=s.prompt_ids, attention_mask=s.prompt_mask, use_cache=True)
        cache = first.past_key_values
        cache.reorder_cache(s.owner)
        rows = torch.arange(prompt_hidden.shape[0], device=prompt_hidden.device)
        head = prompt_hidden[rows, s.prompt_last][s.owner]
        rest, _ = final_hidden(
            model,
            input_ids=s.response_inputs,
            attention_mask=s.attention_mask,
            position_ids=s.position_ids,
            past_key_values=cache,
            use_cache=True,
        )
        width = mb.response_ids.shape[1]
        return torch.cat([head[:, None], rest[:, : width - 1]], dim=1)

    def _response_logprobs(self, model, mb: MicroBatch, with_entropy: bool = False):
        chunk = self.cfg.learner.logits_chunk_tokens
        if chunk > 0 and chunking_unsupported(model) is None:
            stats = token_logprobs(model, self._hidden(model, mb), mb.response_ids, chunk, self.temperature, with_entropy)
            return stats.logprobs, stats.entropy
        logits = self._logits(model, mb) / self.temperature
        logprobs = losses.logprobs_from_logits(logits, mb.response_ids)
        entropy = losses.entropy_from_logits(logits) if with_entropy else None
        return logprobs, entropy

    def _values(self, mb: MicroBatch) -> torch.Tensor:
        # A token-classification head returns no keys/values to share: one plain pass.
        return self._logits(self.critic, mb, prompt_once=False)[..., 0]

    # ----------------------------------------------------------------- compute
    @torch.no_grad()
    def compute(self, samples: Samples, need_old_logprobs: bool) -> dict[str, list[np.ndarray]]:
        """Per-token old logprobs, reference logprobs and values for this rank's samples."""
        out: dict[str, list[np.ndarray]] = {}
        wanted = [
            ("old_logprobs", need_old_logprobs, lambda mb: self._response_logprobs(self.policy, mb)[0]),
            ("ref_logprobs", self.use_reference, lambda mb: self._response_logprobs(self.ref, mb)[0]),
            ("old_values", self.use_critic, self._values),
        ]
        plan = self._plan(samples, self.cfg.learner.micro_batch_tokens)
        fallback = samples.subset([0]) if len(samples) else self._placeholder()
        for key, enabled, fn in wanted:
            if not enabled:
                continue
            values: list[np.ndarray] = []
            for index in plan:
                mb, weight = self._micro(samples, index, fallback)
                result = fn(mb)
                if weight:
                    values.extend(unpad(result, mb.response_mask))
            out[key] = values
        return out

    def _placeholder(self, keys: tuple[str, ...] = ()) -> Samples:
        """One padding token, for a rank with no samples: it still joins every collective."""
        return Samples([[self.pad_id]], [[self.pad_id]], {k: [np.zeros(1, np.float32)] for k in keys})

    # ------------------------------------------------------------------ update
    def update(self, samples: Samples) -> dict[str, float]:
        """``ppo_epochs`` x ``mini_batches`` optimizer steps on this rank's samples."""
        fault_injection.point("learner.update", rank=self.rank, optimizer_steps=self.optimizer_steps)
        lc = self.cfg.learner
        stats: dict[str, list[float]] = {}
        order = list(range(len(samples)))
        for _ in range(lc.ppo_epochs):
            for part in np.array_split(np.array(order, dtype=int), lc.mini_batches):
                mini = samples.subset(part.tolist())
                for key, value in self._step(mini).items():
                    stats.setdefault(key, []).append(value)
        result = {k: float(np.mean(v)) for k, v in stats.items()}
        result["learner/skipped_steps"] = float(self.skipped_steps)
        result["learner/lr"] = float(self.scheduler.get_last_lr()[0])
        return result

    def _global(self, value: float) -> float:
        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t)
        return float(t.item())

    def _step(self, mini: Samples) -> dict[str, float]:
        """One optimizer step whose loss is normalised over the whole group's mini-batch.

        Each rank's loss is ``sum(local terms) / global count * world_size``: FSDP2 averages
        gradients over ranks, so the result equals the single-process loss on the full
        mini-batch however samples are split among ranks and micro-batches.
        """
        algo = self.algo
        by_sequence = algo.loss_agg == "seq_mean_token_mean"
        # Units count only what carries loss (multi-turn: not the environment's tokens).
        local_units = float(mini.loss_sequences() if by_sequence else mini.loss_tokens())
        global_units = max(self._global(local_units), 1.0)
        plan = self._plan(mini, self.cfg.learner.micro_batch_tokens)
        fallback = mini.subset([0]) if len(mini) else self._placeholder(UPDATE_KEYS)
        totals: dict[str, float] = {}
        for index in plan:
            mb, weight = self._micro(mini, index, fallback)
            units = (mb.loss_mask.any(-1).sum() if by_sequence else mb.loss_mask.sum()).item()
            scale = weight * units / global_units * self.world_size
            stats = self._micro_loss(mb, scale)
            for key, value in stats.items():
                totals[key] = totals.get(key, 0.0) + weight * value * units / global_units
        metrics = {k: self._global(v) for k, v in totals.items()}
        metrics.update(self._optimizer_step())
        return metrics

    def _micro_loss(self, mb: MicroBatch, scale: float) -> dict[str, float]:
        algo, mask, x = self.algo, mb.loss_mask, mb.extras
        need_entropy = algo.entropy_coef > 0
        logprobs, entropy = self._response_logprobs(self.policy, mb, with_entropy=need_entropy)
        # Without a stored old policy (one epoch, one mini-batch) the sampling policy *is* the
        # current one: ratio = 1 in value, and the gradient is the exact policy gradient.
        old = x["old_logprobs"] if "old_logprobs" in x else logprobs.detach()
        loss, stats = losses.policy_loss(
            logprobs, old, x["advantages"], mask, algo.clip_low, algo.clip_high, algo.loss_agg
        )
        stats = {f"actor/{k}": v for k, v in stats.items()}
        stats["actor/pg_loss"] = float(loss.detach())
        if self.use_reference and algo.kl_mode == "loss":
            kl = losses.aggregate(
                losses.kl_estimate(logprobs, x["ref_logprobs"], algo.kl_estimator), mask, algo.loss_agg
            )
            loss = loss + algo.kl_coef * kl
            stats["actor/kl_loss"] = float(kl.detach())
        if need_entropy:
            ent = losses.aggregate(entropy, mask, algo.loss_agg)
            loss = loss - algo.entropy_coef * ent
            stats["actor/entropy"] = float(ent.detach())
        (loss * scale).backward()
        if self.use_critic:
            values = self._values(mb)
            vloss, vstats = losses.value_loss(
                values, x["old_values"], x["returns"], mask, algo.value_clip, algo.loss_agg
            )
            (algo.vf_coef * vloss * scale).backward()
            stats.update({f"critic/{k}": v for k, v in vstats.items()})
            stats["critic/vf_loss"] = float(vloss.detach())
        return stats

    def _clip(self, model) -> float:
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), self.cfg.learner.max_grad_norm)
        if hasattr(norm, "full_tensor"):
            norm = norm.full_tensor()
        return float(norm)

    def _optimizer_step(self) -> dict[str, float]:
        grad_norm = self._clip(self.policy)
        critic_norm = self._clip(self.critic) if self.use_critic else 0.0
        # Every rank sees the same global norm, so all skip together and stay in step.
        if not (math.isfinite(grad_norm) and math.isfinite(critic_norm)):
            self.skipped_steps += 1
            self.optimizer.zero_grad(set_to_none=True)
            if self.use_critic:
                self.critic_optimizer.zero_grad(set_to_none=True)
            return {"actor/grad_norm": float("nan")}
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.use_critic:
            self.critic_optimizer.step()
            self.critic_scheduler.step()
            self.critic_optimizer.zero_grad(set_to_none=True)
        self.optimizer_steps += 1
        out = {"actor/grad_norm": grad_norm}
        if self.use_critic:
            out["critic/grad_norm"] = critic_norm
        return out

    # --------------------------------------------------------- weights, probes
    def full_state_dict(self, which: str = "policy") -> dict[str, torch.Tensor]:
        """Gather full weights (collective); rank 0 returns them on CPU, others ``{}``."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        model = self.policy if which == "policy" else self.critic
        sd = get_model_state_dict(
            model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        return sd if self.rank == 0 else {}

    def packed_policy(self):
        """:meth:`full_state_dict` of the policy as object-store friendly arrays (collective)."""
        return weight_transport.pack(self.full_state_dict("policy"))

    @torch.no_grad()
    def score(self, prompt_ids: list[list[int]], response_ids: list[list[int]]) -> list[np.ndarray]:
        """Teacher-forced policy logprobs of given responses (the weight-sync probe)."""
        samples = Samples(prompt_ids, response_ids, {})
        # Engines report probe (prompt) logprobs of the raw model, before any temperature.
        sampling_temperature, self.temperature = self.temperature, 1.0
        try:
            return self.compute(samples, need_old_logprobs=True)["old_logprobs"]
        finally:
            self.temperature = sampling_temperature

    # ------------------------------------------------------------- checkpoints
    _COUNTERS = ("optimizer_steps", "skipped_steps")

    def _trained_models(self) -> list[tuple]:
        """(name, model, optimizer, scheduler, optimizer dir) for every model this worker trains."""
        models = [("policy", self.policy, self.optimizer, self.scheduler, "optimizer")]
        if self.use_critic:
            models.append(("critic", self.critic, self.critic_optimizer, self.critic_scheduler, "critic_optimizer"))
        return models

    def save(self, directory: str, tokenizer_path: str) -> None:
        """Collective: this rank's part of a checkpoint (layout: :mod:`learners.checkpoint`)."""
        counters = {name: getattr(self, name) for name in self._COUNTERS}
        checkpoint.save_learner(directory, self._trained_models(), self.full_state_dict, self.rank, counters, tokenizer_path)

    def load(self, directory: str) -> None:
        """Collective: restore weights, optimizer shards, schedulers and counters."""
        counters = checkpoint.load_learner(directory, self._trained_models(), self.rank, self._COUNTERS)
        for name, value in counters.items():
            setattr(self, name, value)

    def set_skipped_steps(self, value: int) -> None:
        self.skipped_steps = value

    def shutdown(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()

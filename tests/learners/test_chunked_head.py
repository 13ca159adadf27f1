"""The head applied in chunks (``learner.logits_chunk_tokens``, ``sft.logits_chunk_tokens``)
against full logits: the same log-probabilities, entropy, losses, gradients and weights after an
update, on one rank and on two FSDP2 ranks, in both micro-batch layouts; a softcapped head; the
SFT loss."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from tests.learners.test_learner_worker import free_port, make_worker
from tests.learners.test_prompt_once import PROMPTS, RESPONSES, batch

COMMON = ("learner.lr=1e-3", "algorithm.kl_coef=0.1", "algorithm.entropy_coef=0.01", "learner.micro_batch_tokens=24")


def run(model_dir: str, *overrides: str, rank: int = 0, world: int = 1, port: int = 0, samples=None):
    worker = make_worker(model_dir, *COMMON, *overrides, rank=rank, world=world, port=port)
    samples = samples if samples is not None else batch()
    computed = worker.compute(samples, need_old_logprobs=True)
    metrics = worker.update(samples)
    return worker, computed, metrics, worker.score(PROMPTS, RESPONSES)


@pytest.mark.parametrize("share", ["true", "false"])
def test_chunked_head_matches_full_logits(model_dir, process_group, share):
    # Chunks of 3 tokens: every micro-batch spans several, and chunk edges cut sequences.
    _, c_full, m_full, s_full = run(model_dir, f"learner.share_prompt_forward={share}", "learner.logits_chunk_tokens=0")
    _, c_chunk, m_chunk, s_chunk = run(model_dir, f"learner.share_prompt_forward={share}", "learner.logits_chunk_tokens=3")
    for key in ("old_logprobs", "ref_logprobs"):
        for a, b in zip(c_chunk[key], c_full[key]):
            np.testing.assert_allclose(a, b, atol=2e-5)
    for key in ("actor/pg_loss", "actor/kl_loss", "actor/entropy", "actor/grad_norm"):
        assert np.isclose(m_chunk[key], m_full[key], rtol=1e-4, atol=1e-6), (key, m_chunk[key], m_full[key])
    for a, b in zip(s_chunk, s_full):  # the weights after the step agree
        np.testing.assert_allclose(a, b, atol=2e-5)


def _two_ranks(rank: int, port: int, model_dir: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    mine = batch().subset(list(range(6)) if rank == 0 else [6, 7, 8])
    worker, _, metrics, scores = run(model_dir, "learner.num_ranks=2", "learner.logits_chunk_tokens=4",
                                     rank=rank, world=2, port=port, samples=mine)
    if rank == 0:
        np.save(os.path.join(out_dir, "scores.npy"), np.concatenate(scores))
        np.save(os.path.join(out_dir, "grad_norm.npy"), np.array([metrics["actor/grad_norm"]]))
    worker.shutdown()


def test_two_ranks_chunked_match_one_rank_with_full_logits(model_dir, process_group, tmp_path):
    _, _, metrics, scores = run(model_dir, "learner.logits_chunk_tokens=0")
    mp.start_processes(_two_ranks, args=(free_port(), model_dir, str(tmp_path)), nprocs=2, start_method="spawn")
    np.testing.assert_allclose(np.load(tmp_path / "scores.npy"), np.concatenate(scores), atol=2e-5)
    assert np.isclose(np.load(tmp_path / "grad_norm.npy")[0], metrics["actor/grad_norm"], rtol=1e-4)


def test_softcapped_head_and_temperature_match_the_model_logits():
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from learners.head import chunking_unsupported, final_hidden, token_logprobs
    from learners.losses import entropy_from_logits, logprobs_from_logits

    torch.manual_seed(0)
    config = Gemma3TextConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=32, final_logit_softcapping=3.0)
    model = Gemma3ForCausalLM(config)
    assert chunking_unsupported(model) is None
    ids = torch.randint(0, 300, (2, 9))
    logits = model(input_ids=ids).logits[:, :-1].float() / 0.7
    hidden, _ = final_hidden(model, input_ids=ids)
    lp, ent, _ = token_logprobs(model, hidden[:, :-1], ids[:, 1:], chunk=5, temperature=0.7, entropy=True)
    torch.testing.assert_close(lp, logprobs_from_logits(logits, ids[:, 1:]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent, entropy_from_logits(logits), atol=1e-5, rtol=1e-5)


def test_sft_loss_chunked_matches_full_logits(model_dir):
    from transformers import AutoModelForCausalLM

    from learners.sft_trainer import token_nll

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    examples = [([1, 5, 6, 7, 8, 9, 2], [0, 0, 0, 1, 1, 1, 1]), ([1, 11, 12, 2], [0, 0, 1, 1])]
    grads = []
    for chunk in (0, 3):
        model.zero_grad()
        nll, count, hits = token_nll(model, examples, 0, "cpu", chunk)
        nll.backward()
        grads.append(([float(nll.detach()), float(count), float(hits)], [p.grad.clone() for p in model.parameters()]))
    (full, g_full), (chunked, g_chunked) = grads
    np.testing.assert_allclose(chunked, full, rtol=1e-5)
    for a, b in zip(g_chunked, g_full):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)

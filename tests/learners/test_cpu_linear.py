"""oneDNN linear layers on CPU: the same values and gradients as ``nn.Linear``, in a layer and
in a whole learner update."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from learners import cpu_linear
from learners.batching import Samples
from pipeline.config import load_config

needs_onednn = pytest.mark.skipif(not cpu_linear.onednn_available(), reason="torch built without oneDNN")

PROMPTS = [[1, 5, 6, 7, 8], [1, 9, 10], [1, 5, 6], [1, 11, 12, 13]]
RESPONSES = [[13, 14, 2], [15, 16], [17, 18, 19, 2], [20]]


def twin_layers(bias: bool) -> tuple[torch.nn.Linear, torch.nn.Linear]:
    torch.manual_seed(0)
    plain = torch.nn.Linear(24, 40, bias=bias)
    fast = torch.nn.Linear(24, 40, bias=bias)
    fast.load_state_dict(plain.state_dict())
    assert cpu_linear.use_onednn(fast) == 1
    return plain, fast


@needs_onednn
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(7, 24), (3, 5, 24)])
def test_values_and_gradients_match_nn_linear(bias, shape):
    plain, fast = twin_layers(bias)
    assert type(fast) is cpu_linear.OneDNNLinear and fast.state_dict().keys() == plain.state_dict().keys()
    x = torch.randn(*shape)
    grad_out = torch.randn(*shape[:-1], 40)
    results = []
    for layer in (plain, fast):
        inp = x.clone().requires_grad_(True)
        out = layer(inp)
        out.backward(grad_out)
        grads = [inp.grad] + [p.grad for p in layer.parameters()]
        results.append((out, grads))
    (out_a, grads_a), (out_b, grads_b) = results
    torch.testing.assert_close(out_b, out_a, rtol=1e-5, atol=1e-5)
    assert len(grads_a) == len(grads_b) == (3 if bias else 2)
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


@needs_onednn
def test_frozen_weights_and_non_float32_inputs():
    plain, fast = twin_layers(bias=True)
    fast.requires_grad_(False)
    x = torch.randn(4, 24, requires_grad=True)
    fast(x).sum().backward()  # only the input gradient is asked for
    expected = plain.weight.sum(0).expand(4, 24)
    torch.testing.assert_close(x.grad, expected, rtol=1e-5, atol=1e-5)
    assert fast.weight.grad is None
    with torch.no_grad():  # bf16 is not what oneDNN is used for here: F.linear computes it
        fast_bf16, plain_bf16 = fast.to(torch.bfloat16), plain.to(torch.bfloat16)
        xb = torch.randn(4, 24, dtype=torch.bfloat16)
        torch.testing.assert_close(fast_bf16(xb), plain_bf16(xb))


def test_choice_is_checked_and_auto_follows_the_vendor(monkeypatch):
    with pytest.raises(ValueError, match="learner.cpu_linear"):
        cpu_linear.resolve("mkl")
    with pytest.raises(ValueError, match="learner.cpu_linear"):
        load_config(None, ["learner.cpu_linear=mkl"])
    assert cpu_linear.resolve("torch") == "torch"
    monkeypatch.setattr(cpu_linear, "cpu_vendor", lambda: "GenuineIntel")
    assert cpu_linear.resolve("auto") == "torch"
    monkeypatch.setattr(cpu_linear, "cpu_vendor", lambda: "AuthenticAMD")
    assert cpu_linear.resolve("auto") == ("onednn" if cpu_linear.onednn_available() else "torch")
    monkeypatch.setattr(cpu_linear, "onednn_available", lambda: False)
    assert cpu_linear.resolve("auto") == "torch"
    with pytest.raises(ValueError, match="no oneDNN linear"):
        cpu_linear.resolve("onednn")


def make_worker(model_dir: str, kernel: str):
    from learners.worker import LearnerWorker

    cfg = load_config(None, [
        f"model.path={model_dir}", "learner.num_ranks=1", "prompts_per_step=1", "rollout.n_samples=4",
        "algorithm.kl_coef=0.04", "learner.lr=1e-2", f"learner.cpu_linear={kernel}",
    ])
    worker = LearnerWorker(cfg, 0, 1)
    info = worker.setup("127.0.0.1", 0)
    assert info["linear_kernel"] == kernel
    return worker


@needs_onednn
def test_learner_update_is_the_same_with_either_kernel(model_dir, process_group):
    """Reference logprobs, two FSDP2 updates with KL and the updated policy's scores."""
    workers = {k: make_worker(model_dir, k) for k in ("torch", "onednn")}
    linears = {k: {type(m) for m in w.policy.modules() if isinstance(m, torch.nn.Linear)} for k, w in workers.items()}
    assert linears == {"torch": {torch.nn.Linear}, "onednn": {cpu_linear.OneDNNLinear}}
    assert {type(m) for m in workers["onednn"].ref.modules() if isinstance(m, torch.nn.Linear)} == {
        cpu_linear.OneDNNLinear
    }
    advantages = [np.full(len(r), a, np.float32) for r, a in zip(RESPONSES, (1.0, -0.5, 0.25, -1.0))]
    metrics, scores = {}, {}
    for kernel, worker in workers.items():
        ref = worker.compute(Samples(PROMPTS, RESPONSES, {}), need_old_logprobs=False)["ref_logprobs"]
        batch = Samples(PROMPTS, RESPONSES, {"advantages": advantages, "ref_logprobs": ref})
        metrics[kernel] = [worker.update(batch) for _ in range(2)]
        scores[kernel] = np.concatenate(worker.score(PROMPTS, RESPONSES))
    for a, b in zip(metrics["torch"], metrics["onednn"]):
        for key in ("actor/pg_loss", "actor/kl_loss", "actor/grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key
    assert metrics["onednn"][1]["actor/kl_loss"] > 0  # the policy moved, so gradients flowed
    np.testing.assert_allclose(scores["onednn"], scores["torch"], atol=2e-5)

import numpy as np
import pytest
import torch

from learners.batching import Samples, at_positions, collate, pack_by_tokens, split_evenly, unpad

CPU = torch.device("cpu")


# ----------------------------------------------------------------------------- split_evenly
def test_split_evenly_first_parts_get_the_remainder():
    assert split_evenly(10, 3) == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert split_evenly(8, 4) == [[0, 1], [2, 3], [4, 5], [6, 7]]


def test_split_evenly_more_parts_than_items():
    assert split_evenly(2, 4) == [[0], [1], [], []]
    assert split_evenly(0, 2) == [[], []]


@pytest.mark.parametrize("n,parts", [(1, 1), (7, 2), (13, 5), (100, 7), (3, 8)])
def test_split_evenly_is_contiguous_and_balanced(n, parts):
    out = split_evenly(n, parts)
    assert len(out) == parts
    # Concatenated in order they are exactly 0..n-1, so every part is a contiguous range.
    assert [i for part in out for i in part] == list(range(n))
    sizes = [len(p) for p in out]
    assert max(sizes) - min(sizes) <= 1
    assert sizes == sorted(sizes, reverse=True)


# ----------------------------------------------------------------------------- pack_by_tokens
def test_pack_by_tokens_hand_example():
    # [3, 5] pads to 2 x 5 = 10 <= 10; adding 2 would be 3 x 5 = 15; 8 with anything is 16.
    assert pack_by_tokens([3, 5, 2, 8, 1], budget=10) == [[0, 1], [2], [3], [4]]
    assert pack_by_tokens([2, 2, 2, 2, 2], budget=6) == [[0, 1, 2], [3, 4]]


def test_pack_by_tokens_oversize_sample_gets_its_own_group():
    assert pack_by_tokens([4, 20, 4, 4], budget=10) == [[0], [1], [2, 3]]
    assert pack_by_tokens([50], budget=10) == [[0]]


def test_pack_by_tokens_budget_and_order_on_random_lengths():
    rng = np.random.default_rng(0)
    for _ in range(50):
        lengths = rng.integers(1, 40, size=int(rng.integers(1, 30))).tolist()
        budget = int(rng.integers(1, 120))
        groups = pack_by_tokens(lengths, budget)
        assert [i for g in groups for i in g] == list(range(len(lengths)))
        for g in groups:
            assert g, "no empty groups"
            assert len(g) == 1 or len(g) * max(lengths[i] for i in g) <= budget
        # Greedy: the next sample would not have fit into the previous group.
        for g, nxt in zip(groups, groups[1:]):
            extended = g + [nxt[0]]
            assert len(extended) * max(lengths[i] for i in extended) > budget


def test_pack_by_tokens_empty():
    assert pack_by_tokens([], budget=10) == []


# ----------------------------------------------------------------------------- collate
def _samples():
    return Samples(
        prompt_ids=[[1, 2, 3], [4], [10, 11]],
        response_ids=[[5, 6], [7, 8, 9], []],
        extras={
            "advantages": [np.array([0.5, -1.0]), np.array([1.0, 2.0, 3.0]), np.array([])],
            "old_logprobs": [np.array([-0.1, -0.2]), np.array([-0.3, -0.4, -0.5]), np.array([])],
        },
    )


def test_collate_pads_and_masks():
    mb = collate(_samples(), pad_id=0, device=CPU)
    assert mb.input_ids.tolist() == [[1, 2, 3, 5, 6], [4, 7, 8, 9, 0], [10, 11, 0, 0, 0]]
    assert mb.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0], [1, 1, 0, 0, 0]]
    assert mb.response_ids.tolist() == [[5, 6, 0], [7, 8, 9], [0, 0, 0]]
    assert mb.response_mask.dtype == torch.float32
    assert mb.response_mask.tolist() == [[1, 1, 0], [1, 1, 1], [0, 0, 0]]
    assert mb.input_ids.dtype == torch.long and mb.positions.dtype == torch.long


def test_collate_pad_id_is_used():
    mb = collate(_samples(), pad_id=99, device=CPU)
    assert mb.input_ids[1, 4].item() == 99 and mb.input_ids[2, 2:].tolist() == [99, 99, 99]
    assert mb.response_ids[0, 2].item() == 99
    assert mb.attention_mask[1, 4].item() == 0


def test_collate_positions_predict_response_tokens():
    mb = collate(_samples(), pad_id=0, device=CPU)
    # Response token t of a sample with prompt length p is predicted at p - 1 + t; padding
    # repeats the last valid position (stays inside the sequence).
    assert mb.positions.tolist() == [[2, 3, 3], [0, 1, 2], [1, 1, 1]]
    for i in range(3):
        for t in range(int(mb.response_mask[i].sum())):
            p = mb.positions[i, t].item()
            assert mb.input_ids[i, p + 1] == mb.response_ids[i, t]


def test_collate_extras_placed_and_zero_padded():
    mb = collate(_samples(), pad_id=0, device=CPU)
    assert set(mb.extras) == {"advantages", "old_logprobs"}
    assert mb.extras["advantages"].dtype == torch.float32
    assert mb.extras["advantages"].tolist() == [[0.5, -1.0, 0.0], [1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]
    torch.testing.assert_close(
        mb.extras["old_logprobs"],
        torch.tensor([[-0.1, -0.2, 0.0], [-0.3, -0.4, -0.5], [0.0, 0.0, 0.0]]),
    )


def test_collate_truncates_extras_to_response_length():
    s = Samples([[1]], [[2, 3]], {"x": [np.array([1.0, 2.0, 3.0, 4.0])]})
    mb = collate(s, pad_id=0, device=CPU)
    assert mb.extras["x"].tolist() == [[1.0, 2.0]]


# ----------------------------------------------------------------------------- at_positions
def test_at_positions_2d_matches_manual_indexing():
    per_position = torch.arange(12, dtype=torch.float32).view(2, 6)
    positions = torch.tensor([[2, 3, 3], [0, 1, 5]])
    out = at_positions(per_position, positions)
    assert out.tolist() == [[2.0, 3.0, 3.0], [6.0, 7.0, 11.0]]


def test_at_positions_3d_matches_manual_indexing():
    g = torch.Generator().manual_seed(0)
    per_position = torch.randn(3, 7, 5, generator=g)
    positions = torch.tensor([[0, 4, 6, 6], [1, 2, 3, 4], [5, 5, 5, 5]])
    out = at_positions(per_position, positions)
    assert out.shape == (3, 4, 5)
    for b in range(3):
        for t in range(4):
            assert torch.equal(out[b, t], per_position[b, positions[b, t]])


def test_at_positions_on_collated_logits_picks_next_token_scores():
    mb = collate(_samples(), pad_id=0, device=CPU)
    vocab = 16
    # "Logits" that score exactly the next token at each position: one-hot of input_ids[:, 1:].
    nxt = torch.cat([mb.input_ids[:, 1:], torch.zeros_like(mb.input_ids[:, :1])], dim=1)
    logits = torch.nn.functional.one_hot(nxt, vocab).float()
    picked = at_positions(logits, mb.positions)  # [b, R, V]
    chosen = picked.gather(-1, mb.response_ids.unsqueeze(-1)).squeeze(-1)
    assert torch.equal(chosen * mb.response_mask, mb.response_mask)


# ----------------------------------------------------------------------------- unpad
def test_unpad_hand_values():
    values = torch.tensor([[1.0, 2.0, 9.0], [3.0, 9.0, 9.0], [9.0, 9.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    out = unpad(values, mask)
    assert [a.tolist() for a in out] == [[1.0, 2.0], [3.0], []]
    assert all(a.dtype == np.float32 for a in out)


def test_unpad_round_trips_collate_extras():
    s = _samples()
    mb = collate(s, pad_id=0, device=CPU)
    for key, original in s.extras.items():
        back = unpad(mb.extras[key], mb.response_mask)
        assert len(back) == len(original)
        for a, b in zip(back, original):
            np.testing.assert_allclose(a, b.astype(np.float32))


def test_unpad_copies_and_detaches():
    src = torch.ones(1, 2)
    out = unpad(src, torch.ones(1, 2))
    out[0][0] = 7.0
    assert src.tolist() == [[1.0, 1.0]], "unpad must copy, not alias the tensor's memory"
    leaf = torch.ones(1, 2, requires_grad=True)
    assert unpad(leaf * 3, torch.tensor([[1.0, 0.0]]))[0].tolist() == [3.0]


# ----------------------------------------------------------------------------- Samples
def test_samples_subset_and_len():
    s = _samples()
    assert len(s) == 3
    sub = s.subset([2, 0])
    assert len(sub) == 2
    assert sub.prompt_ids == [[10, 11], [1, 2, 3]]
    assert sub.response_ids == [[], [5, 6]]
    assert [a.tolist() for a in sub.extras["advantages"]] == [[], [0.5, -1.0]]
    assert [a.tolist() for a in sub.extras["old_logprobs"]] == [[], [-0.1, -0.2]]
    assert s.subset([]).prompt_ids == [] and set(s.subset([]).extras) == set(s.extras)

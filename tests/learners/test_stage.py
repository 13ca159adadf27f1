"""What the Ray Train stages' workers share: the example order and the LR schedule."""

from learners.stage import EpochOrder, lr_factor


def test_ranks_split_each_batch_and_every_example_comes_once_per_epoch():
    orders = [EpochOrder(10, 4, seed=3) for _ in range(2)]  # one per rank, same seed
    seen = []
    for _ in range(5):  # 5 batches of 4 = two epochs of 10
        shares = [order.next_share(rank, 2) for rank, order in enumerate(orders)]
        assert all(len(s) == 2 for s in shares) and not set(shares[0]) & set(shares[1])
        seen += shares[0] + shares[1]
    assert sorted(seen[:8]) == sorted(set(seen[:8])) and set(seen) == set(range(10))
    assert EpochOrder(10, 4, seed=3).next_share(0, 1) == seen[:2] + seen[2:4]


def test_lr_warms_up_then_decays_to_a_tenth():
    assert lr_factor(0, 10, 100) == 0.1 and lr_factor(9, 10, 100) == 1.0
    assert lr_factor(10, 10, 100) == 1.0 and abs(lr_factor(100, 10, 100) - 0.1) < 1e-12

import numpy as np
import pytest

from robustbench_dml.datasets.samplers import SPC2BatchSampler

LABELS = np.repeat(np.arange(7), [5, 9, 3, 12, 1, 6, 4])


def test_pairs_share_a_class_and_anchors_cover_the_epoch():
    s = SPC2BatchSampler(LABELS, 4, seed=3)
    batches = list(s)
    assert len(batches) == len(LABELS) // 4 == len(s)
    anchors = []
    for b in batches:
        assert len(b) == 8
        assert all(LABELS[b[i]] == LABELS[b[i + 1]] for i in range(0, 8, 2))
        anchors += b[0::2]
    assert len(set(anchors)) == len(anchors)  # each image is an anchor at most once per epoch


def test_same_seed_and_epoch_reproduce_and_epochs_differ():
    a, b = SPC2BatchSampler(LABELS, 4, seed=3), SPC2BatchSampler(LABELS, 4, seed=3)
    assert list(a) == list(b)
    b.set_epoch(1)
    assert list(a) != list(b)


@pytest.mark.parametrize("world", [2, 3])
def test_ddp_slices_are_disjoint_and_reassemble_the_global_batch(world):
    single = SPC2BatchSampler(LABELS, 2 * world, seed=1)
    shards = [list(SPC2BatchSampler(LABELS, 2, seed=1, rank=r, world_size=world)) for r in range(world)]
    assert all(len(s) == len(single) for s in shards)
    for step, full in enumerate(single):
        parts = [shards[r][step] for r in range(world)]
        pairs = {tuple(p[i:i + 2]) for p in parts for i in range(0, len(p), 2)}
        assert pairs == {tuple(full[i:i + 2]) for i in range(0, len(full), 2)}
        anchors = [p[i] for p in parts for i in range(0, len(p), 2)]
        assert len(set(anchors)) == len(anchors)


def test_partner_distribution_is_uniform_within_class():
    labels = np.array([0] * 4 + [1] * 4)
    counts = np.zeros(8)
    for epoch in range(400):
        s = SPC2BatchSampler(labels, 8, seed=0)
        s.set_epoch(epoch)
        (batch,) = list(s)
        for i in range(0, 16, 2):
            if batch[i] == 0:
                counts[batch[i + 1]] += 1
    assert counts[4:].sum() == 0
    assert np.allclose(counts[:4] / 400, 0.25, atol=0.08)

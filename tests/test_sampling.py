"""Class-balanced sampler: draw frequencies, rank split, epoch/seed determinism."""

import numpy as np
import pytest

from dcls_audio.data.sampling import BalancedDistributedSampler, class_balanced_weights


def long_tail(n_per_class=(400, 40, 10, 4)):
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(n_per_class)])
    return np.eye(len(n_per_class), dtype=bool)[labels], labels


def test_weights_hand_computed():
    y = np.array([[1, 0], [1, 0], [1, 1], [0, 0]])
    # class counts 3 and 1: rows 1/3, 1/3, 1/3 + 1, 0 -> normalised by 2
    np.testing.assert_allclose(class_balanced_weights(y), [1 / 6, 1 / 6, 4 / 6, 0])


def test_single_label_classes_are_drawn_equally_often():
    targets, labels = long_tail()
    sampler = BalancedDistributedSampler(targets, seed=0)
    counts = np.zeros(4)
    for epoch in range(40):
        sampler.set_epoch(epoch)
        counts += np.bincount(labels[list(sampler)], minlength=4)
    freq = counts / counts.sum()
    # 40 epochs x 454 draws = 18160; binomial std of a 1/4 share is ~0.0032
    np.testing.assert_allclose(freq, 0.25, atol=0.015)
    # a uniform sampler would give the tail class 4/454 < 0.01
    assert freq[3] > 0.2


def test_ranks_split_one_draw_and_epochs_replay():
    targets, _ = long_tail()
    whole = BalancedDistributedSampler(targets, num_replicas=1, rank=0, seed=3)
    ranks = [BalancedDistributedSampler(targets, num_replicas=3, rank=r, seed=3) for r in range(3)]
    for s in (whole, *ranks):
        s.set_epoch(5)
    draw = ranks[0].global_draw()
    assert all(len(list(s)) == len(targets) // 3 for s in ranks)
    interleaved = np.stack([list(s) for s in ranks], axis=1).reshape(-1)
    np.testing.assert_array_equal(interleaved, draw.numpy())
    again = BalancedDistributedSampler(targets, num_replicas=3, rank=1, seed=3)
    again.set_epoch(5)
    assert list(again) == list(ranks[1])  # a resumed epoch draws the same clips
    again.set_epoch(6)
    assert list(again) != list(ranks[1])
    assert list(whole) != list(BalancedDistributedSampler(targets, seed=4))


def test_errors():
    with pytest.raises(ValueError, match="no training clip has a label"):
        class_balanced_weights(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="rank must be in"):
        BalancedDistributedSampler(np.eye(2), num_replicas=2, rank=2)


@pytest.mark.parametrize("start", [0, 3])
def test_persistent_workers_draw_each_epoch_as_in_process(synthetic_root, start):
    """Persistent workers never see set_epoch: the epoch comes with each index instead."""
    import torch
    from torch.utils.data import DataLoader, DistributedSampler

    from dcls_audio.data import AudioSetHDF5
    from dcls_audio.train.loaders import ResumableSampler
    from dcls_audio.workers import loader_options

    ds = AudioSetHDF5(synthetic_root(8) / "train.h5", num_classes=16, train=True, seed=3)
    sampler = ResumableSampler(DistributedSampler(ds, 1, 0, shuffle=True, seed=3))
    loader = DataLoader(ds, 2, sampler=sampler, **loader_options(1, persistent=True))
    workers = set()
    for epoch in range(3):
        sampler.set_epoch(epoch, start=start if epoch == 1 else 0)
        got = torch.cat([wave for wave, _ in loader])
        workers.add(id(loader._iterator))
        ds.set_epoch(epoch)  # the in-process reference, in the sampler's order
        reference = DistributedSampler(ds, 1, 0, shuffle=True, seed=3)
        reference.set_epoch(epoch)
        order = list(reference)[start if epoch == 1 else 0 :]
        want = torch.stack([ds[i][0] for i in order])
        assert torch.equal(got, want), f"epoch {epoch}"
    assert len(workers) == 1 and loader._iterator._workers[0].is_alive()  # one start, kept
    from dcls_audio.train.preempt import shutdown_workers

    shutdown_workers(loader)
    assert loader._iterator is None

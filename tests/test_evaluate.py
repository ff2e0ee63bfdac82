import datetime
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler

from dcls_audio.train.evaluate import ShardedEvalSampler, predict

NUM_CLIPS = 7  # odd: a padded DistributedSampler would count one clip twice over 2 ranks
LENGTH = 32
NUM_CLASSES = 5


class ToyDataset(Dataset):
    """In-memory clips: (waveform, 0/1 target) or (waveform, target, index)."""

    def __init__(self, n: int = NUM_CLIPS, with_index: bool = False) -> None:
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(n, LENGTH, generator=g)
        self.y = (torch.rand(n, NUM_CLASSES, generator=g) < 0.4).float()
        self.with_index = with_index

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        if self.with_index:
            return self.x[i], self.y[i], i
        return self.x[i], self.y[i]


class ToyFrontend(nn.Module):
    """(N, L) -> (N, 1, 4, L // 4); dropout so that train mode would change the output."""

    def __init__(self) -> None:
        super().__init__()
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(x).reshape(x.shape[0], 1, 4, -1)


def make_model() -> nn.Module:
    torch.manual_seed(123)
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(LENGTH, 16),
        nn.BatchNorm1d(16),
        nn.Dropout(0.5),
        nn.Linear(16, NUM_CLASSES),
    )


def reference(dataset: ToyDataset) -> tuple[np.ndarray, np.ndarray]:
    """Eval-mode sigmoid scores of all clips in one batch."""
    model, frontend = make_model().eval(), ToyFrontend().eval()
    with torch.no_grad():
        s = torch.sigmoid(model(frontend(dataset.x)))
    return s.numpy(), dataset.y.numpy()


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        torch.set_num_threads(1)
        model = nn.parallel.DistributedDataParallel(make_model())
        frontend = ToyFrontend()
        model.train()
        ds = ToyDataset()
        results = {}
        # batch 3: rank 0 holds 4 clips (2 batches), rank 1 holds 3 (1 batch)
        sharded = DataLoader(ds, batch_size=3, sampler=ShardedEvalSampler(len(ds), rank, world))
        results["sharded"] = predict(model, frontend, sharded, "cpu")
        padded = DataLoader(ds, batch_size=2, sampler=DistributedSampler(ds, shuffle=False))
        results["padded"] = predict(model, frontend, padded, "cpu")
        ds_idx = ToyDataset(with_index=True)
        shuffled = DataLoader(ds_idx, batch_size=2, sampler=DistributedSampler(ds_idx, seed=3))
        results["indexed"] = predict(model, frontend, shuffled, "cpu")
        arrays = {f"{k}_{part}": v[i] for k, v in results.items() for i, part in enumerate("st")}
        arrays["modes"] = np.array([m.training for m in model.modules()] + [frontend.training])
        np.savez(os.path.join(out_dir, f"rank{rank}.npz"), **arrays)
        dist.barrier()  # leave together: gloo aborts a rank whose peer tore down first
    finally:
        dist.destroy_process_group()


def test_sharded_sampler_covers_every_index_once():
    for n in [0, 1, 2, 3, 5, 7, 9, 10, 13]:
        for world in range(1, 5):
            shards = [list(ShardedEvalSampler(n, r, world)) for r in range(world)]
            flat = [i for s in shards for i in s]
            assert sorted(flat) == list(range(n)), (n, world)
            assert flat == list(range(n))  # contiguous blocks in rank order
            sizes = [len(ShardedEvalSampler(n, r, world)) for r in range(world)]
            assert sizes == [len(s) for s in shards]
            assert max(sizes) - min(sizes) <= 1
            assert shards == [list(ShardedEvalSampler(n, r, world)) for r in range(world)]


@pytest.mark.parametrize("args", [(5, 2, 2), (5, -1, 2), (5, 0, 0), (-1, 0, 1)])
def test_sharded_sampler_rejects_bad_arguments(args):
    with pytest.raises(ValueError):
        ShardedEvalSampler(*args)


def test_single_process_equals_reference_and_restores_modes():
    ds = ToyDataset()
    ref_s, ref_t = reference(ds)
    model, frontend = make_model(), ToyFrontend()
    model.train()
    model[2].eval()  # a mixed state must come back as it was
    loader = DataLoader(ds, batch_size=3)
    scores, targets = predict(model, frontend, loader, "cpu")
    assert scores.dtype == np.float32 and targets.dtype == np.float32
    assert scores.shape == (NUM_CLIPS, NUM_CLASSES)
    np.testing.assert_allclose(scores, ref_s, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(targets, ref_t)
    assert [m.training for m in model.modules()] == [True, True, True, False, True, True]
    assert frontend.training
    # bfloat16 autocast on the model only: close to float32, not bit-equal
    amp_s, _ = predict(model, frontend, loader, "cpu", amp_dtype=torch.bfloat16)
    np.testing.assert_allclose(amp_s, ref_s, atol=2e-2)


def test_two_process_gloo_equals_single_process(tmp_path):
    ds = ToyDataset()
    single_s, single_t = predict(make_model(), ToyFrontend(), DataLoader(ds, batch_size=4), "cpu")
    ref_s, ref_t = reference(ds)
    np.testing.assert_allclose(single_s, ref_s, rtol=0, atol=1e-6)
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        out = np.load(tmp_path / f"rank{rank}.npz")
        for name in ["sharded", "padded", "indexed"]:
            assert out[f"{name}_s"].shape == (NUM_CLIPS, NUM_CLASSES), name
            np.testing.assert_allclose(out[f"{name}_s"], single_s, rtol=0, atol=1e-6)
            np.testing.assert_array_equal(out[f"{name}_t"], single_t)
        assert out["modes"].all()  # train mode restored on every module


def test_incomplete_or_unordered_loaders_are_rejected():
    ds = ToyDataset()
    model, frontend = make_model(), ToyFrontend()
    with pytest.raises(RuntimeError, match="missing"):
        predict(model, frontend, DataLoader(ds, sampler=ShardedEvalSampler(len(ds), 0, 2)), "cpu")
    with pytest.raises(ValueError, match="drop_last"):
        predict(model, frontend, DataLoader(ds, batch_size=2, drop_last=True), "cpu")
    with pytest.raises(ValueError, match="not deterministic"):
        predict(model, frontend, DataLoader(ds, sampler=RandomSampler(ds)), "cpu")
    batches = [[4, 5, 6], [0, 1], [2, 3]]
    with pytest.raises(ValueError, match="batch_sampler"):
        predict(model, frontend, DataLoader(ds, batch_sampler=batches), "cpu")
    s, _ = predict(
        model, frontend, DataLoader(ToyDataset(with_index=True), batch_sampler=batches), "cpu"
    )
    np.testing.assert_allclose(s, reference(ds)[0], rtol=0, atol=1e-6)
    # a shuffled loader is fine when the dataset returns the index
    ds_idx = ToyDataset(with_index=True)
    s, t = predict(model, frontend, DataLoader(ds_idx, batch_size=2, shuffle=True), "cpu")
    ref_s, ref_t = reference(ds)
    np.testing.assert_allclose(s, ref_s, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(t, ref_t)


def test_target_width_mismatch_is_reported():
    ds = ToyDataset()
    model = nn.Sequential(nn.Flatten(), nn.Linear(LENGTH, NUM_CLASSES + 1))
    with pytest.raises(ValueError, match="num_classes"):
        predict(model, None, DataLoader(ds, batch_size=4), "cpu")

"""Own audio end to end on the CPU: pack -> folds -> multiclass/multilabel training -> aggregation;
class lists read from the packed file; 5 s clips; fine-tuning into another class count."""

import json
import re

import numpy as np
import pytest
import soundfile as sf
import torch
from omegaconf import OmegaConf

from dcls_audio import aggregate
from dcls_audio.config import compose_config
from dcls_audio.datasets.pack_custom import pack_custom
from dcls_audio.models import build_model
from dcls_audio.tag import load_tagger, tag_file
from dcls_audio.train import run
from dcls_audio.train.loaders import build_loaders, resolve_classes, resolve_data_files

CLASSES = ("low", "mid", "high")
FREQ = {"low": 300.0, "mid": 1500.0, "high": 6000.0}


def tiny(h5, *extra):
    """A few CPU steps of the demo model on 5 s clips of a packed file (data=custom)."""
    return compose_config(
        [
            "experiment=demo", "data=custom", f"data.root={h5.parent}",
            f"data.train_files=[{h5}]", f"data.eval_files=[{h5}]", "data.num_workers=0",
            "trainer.batch_size=4", "trainer.global_batch_size=4", "trainer.epochs=1",
            "trainer.warmup_epochs=0", "trainer.max_steps=2", "optim.lr_ref_batch=4",
            "trainer.log_every=1", *extra,
        ]
    )  # fmt: skip


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """12 tones (3 classes x 2 folds x 2) as wav/flac/ogg at 16/22.05/44.1 kHz, mono and stereo."""
    root = tmp_path_factory.mktemp("own")
    audio = root / "audio"
    audio.mkdir()
    rows, multi = ["filename,labels,fold"], ["filename,labels,fold"]
    formats = [("wav", 16000), ("flac", 44100), ("ogg", 22050)]
    rng = np.random.default_rng(0)
    k = 0
    for fold in (1, 2):
        for c in CLASSES:
            for j in range(2):
                ext, sr = formats[k % 3]
                t = np.arange(int(sr * rng.uniform(3.0, 6.0))) / sr
                x = 0.3 * np.sin(2 * np.pi * FREQ[c] * t) + 0.01 * rng.standard_normal(len(t))
                if k % 2:
                    x = np.stack([x, x], axis=1)
                name = f"{c}_{fold}_{j}.{ext}"
                sf.write(audio / name, x, sr)
                rows.append(f"{name},{c},{fold}")
                multi.append(f"{name},{c};noisy,{fold}" if j else f"{name},{c},{fold}")
                k += 1
    (root / "meta.csv").write_text("\n".join(rows) + "\n")
    (root / "multi.csv").write_text("\n".join(multi) + "\n")
    single = root / "packed" / "own.h5"
    pack_custom(audio, single, root / "meta.csv", clip_seconds=5.0, progress=False)
    multilabel = root / "packed" / "multi.h5"
    pack_custom(audio, multilabel, root / "multi.csv", clip_seconds=5.0, progress=False)
    return {"root": root, "single": single, "multi": multilabel}


def test_folds_never_leak_and_classes_come_from_the_file(corpus):
    for fold in (1, 2):
        cfg = tiny(corpus["single"], f"data.fold={fold}")
        assert cfg.data.num_classes is None
        files = [resolve_data_files(cfg.data, k) for k in ("train_files", "eval_files")]
        assert resolve_classes(cfg, files) == ["high", "low", "mid"]
        assert cfg.data.num_classes == 3 and cfg.model.num_classes == 3
        loaders = build_loaders(
            cfg.data, cfg.augment, *files, batch_size=4, eval_batch_size=None,
            max_eval_samples=None, seed=0, rank=0, world_size=1, device=torch.device("cpu"),
        )  # fmt: skip
        train, held_out = loaders.train.dataset, loaders.eval.dataset
        assert len(train) == 6 and len(held_out) == 6
        rows = lambda ds: {int(r) for r in ds._rows}  # noqa: E731
        assert rows(train).isdisjoint(rows(held_out))
        assert len(rows(train) | rows(held_out)) == 12
        wave, target = held_out[0]
        assert wave.shape == (5 * 32000,) and target.sum() == 1
        assert train[0][0].shape == (5 * 32000,)  # rolled / speed-perturbed at 5 s too
    with pytest.raises(ValueError, match=r"data.fold=7 is not among the file's folds \[1, 2\]"):
        build_loaders(
            OmegaConf.merge(cfg.data, {"fold": 7}), cfg.augment, *files, batch_size=4,
            eval_batch_size=None, max_eval_samples=None, seed=0, rank=0, world_size=1,
            device=torch.device("cpu"),
        )  # fmt: skip


def test_balanced_sampling_reaches_the_loader_and_table1_keeps_it_off(corpus):
    from dcls_audio.data.sampling import BalancedDistributedSampler

    cfg = tiny(corpus["single"], "data.balanced_sampling=true")
    files = [resolve_data_files(cfg.data, k) for k in ("train_files", "eval_files")]
    resolve_classes(cfg, files)
    loaders = build_loaders(
        cfg.data, cfg.augment, *files, batch_size=4, eval_batch_size=None,
        max_eval_samples=None, seed=0, rank=0, world_size=1, device=torch.device("cpu"),
    )  # fmt: skip
    sampler = getattr(loaders.sampler, "sampler", loaders.sampler)  # unwrap a resumable wrapper
    assert isinstance(sampler, BalancedDistributedSampler) and len(sampler) == 6
    table1 = compose_config(["experiment=table1/fastvit_sa24_dsc"]).data
    assert table1.balanced_sampling is False and table1.task == "multilabel"
    assert table1.clip_seconds == 10.0 and table1.fold is None


def test_files_without_a_class_list_use_labels_file_or_audioset(synthetic_root):
    root = synthetic_root(8)
    cfg = compose_config(["data=synthetic", f"data.root={root}", "data.num_classes=10"])
    files = [resolve_data_files(cfg.data, k) for k in ("train_files", "eval_files")]
    with pytest.raises(ValueError, match=r"class_labels_indices.csv lists 16 classes but data.num"):
        resolve_classes(cfg, files)
    cfg = compose_config(["data=synthetic", f"data.root={root}", "data.labels_file=null"])
    with pytest.raises(ValueError, match=r"packaged AudioSet class list lists 527 classes but"):
        resolve_classes(cfg, files)
    cfg = compose_config(["data=synthetic", f"data.root={root}", "data.num_classes=null"])
    assert len(resolve_classes(cfg, files)) == 16 and cfg.data.num_classes == 16


def test_explicit_class_count_is_checked_and_multiclass_refuses_multilabel_data(corpus):
    cfg = tiny(corpus["single"], "data.num_classes=4")
    files = [resolve_data_files(cfg.data, k) for k in ("train_files", "eval_files")]
    with pytest.raises(ValueError, match=r"own.h5 lists 3 classes but data.num_classes=4"):
        resolve_classes(cfg, files)
    cfg = tiny(corpus["multi"])
    files = [resolve_data_files(cfg.data, k) for k in ("train_files", "eval_files")]
    resolve_classes(cfg, files)
    with pytest.raises(ValueError, match=r"data.task=multiclass but 3 of the 6 training clips"):
        build_loaders(
            cfg.data, cfg.augment, *files, batch_size=4, eval_batch_size=None,
            max_eval_samples=None, seed=0, rank=0, world_size=1, device=torch.device("cpu"),
        )  # fmt: skip


def test_two_folds_multiclass_then_aggregate_then_finetune(corpus, tmp_path, capsys):
    runs = tmp_path / "runs"
    for fold in (1, 2):
        cfg = tiny(corpus["single"], f"data.fold={fold}", "augment.mixup=true")
        metrics = run(cfg, run_dir=runs / f"fold{fold}")
        res = json.loads((runs / f"fold{fold}" / "results.json").read_text())
        assert res["task"] == "multiclass" and res["class_names"] == ["high", "low", "mid"]
        assert 0.0 <= res["accuracy"] <= 1.0 and 0.0 <= res["macro_f1"] <= 1.0
        assert len(res["per_class_recall"]) == 3 and res["num_eval_clips"] == 6
        assert np.sum(res["confusion_matrix"]) == 6 and "map" in res
        assert metrics["accuracy"] == res["accuracy"]
        assert res["config"]["data"]["fold"] == fold and res["config"]["model"]["num_classes"] == 3
        csv = (runs / f"fold{fold}" / "confusion.csv").read_text().splitlines()
        assert csv[0] == 'true\\predicted,"high","low","mid"' and len(csv) == 4
        assert (runs / f"fold{fold}" / "confusion.png").stat().st_size > 0
    assert aggregate.main([str(runs)]) == 0
    table = capsys.readouterr().out
    row = next(line for line in table.splitlines() if "0/fold1" in line)
    assert "2 (0/fold1,0/fold2)" in row
    accs = [
        json.loads((runs / f"fold{f}" / "results.json").read_text())["accuracy"] for f in (1, 2)
    ]
    mean, std = 100 * np.mean(accs), 100 * np.std(accs, ddof=1)
    assert f"{mean:.2f} ± {std:.2f}" in row

    # the evaluation command reads the run's clip length and task from the checkpoint
    from dcls_audio.evaluate import evaluate_checkpoint

    found = evaluate_checkpoint(str(runs / "fold2" / "last.pt"), [str(corpus["single"])])
    assert found["num_eval_clips"] == 12 and 0 <= found["accuracy"] <= 1
    assert np.sum(found["confusion_matrix"]) == 12 and len(found["per_class_recall"]) == 3

    # best.pt of a multiclass run is chosen by accuracy
    best = torch.load(runs / "fold1" / "best.pt", weights_only=True)
    assert best["best_score"] == best["metrics"]["accuracy"] != best["metrics"]["map"]

    # tagging uses the run's 5 s clips and softmax
    tagger = load_tagger(runs / "fold1" / "best.pt")
    assert tagger.window_samples == 5 * 32000 and tagger.activation == "softmax"
    clip = corpus["root"] / "long.wav"
    sf.write(clip, 0.3 * np.sin(2 * np.pi * 300 * np.arange(12 * 16000) / 16000), 16000)
    tagged = tag_file(tagger, clip, top_k=3)
    assert tagged["num_windows"] == 3 and tagged["window_s"] == 5.0
    assert tagged["windows"][2]["start_s"] == 10.0 and tagged["windows"][2]["end_s"] == 12.0
    assert sum(t["probability"] for t in tagged["top"]) == pytest.approx(1.0, abs=1e-5)

    # fine-tune the 3-class checkpoint on the 4-class multi-label file: a new head (reported),
    # frozen backbone for its one epoch, layer-wise lr decay
    ckpt = runs / "fold1" / "last.pt"
    cfg = tiny(
        corpus["multi"], "data.task=multilabel", "data.fold=null", f"model.pretrained={ckpt}",
        "model.init=finetune", "trainer.freeze_backbone_epochs=1", "optim.layer_decay=0.75",
        "data.num_classes=5", "trainer.max_steps=null",
    )  # fmt: skip
    with pytest.raises(ValueError, match="multi.h5 lists 4 classes but data.num_classes=5"):
        run(cfg, run_dir=tmp_path / "bad")
    cfg = tiny(
        corpus["multi"], "data.task=multilabel", "data.fold=null", f"model.pretrained={ckpt}",
        "model.init=finetune", "trainer.freeze_backbone_epochs=1", "optim.layer_decay=0.75",
    )  # fmt: skip
    run(cfg, run_dir=tmp_path / "ft")
    res = json.loads((tmp_path / "ft" / "results.json").read_text())
    assert res["task"] == "multilabel" and "accuracy" not in res and 0 <= res["map"] <= 1
    log = [
        json.loads(line) for line in (tmp_path / "ft" / "metrics.jsonl").read_text().splitlines()
    ]
    init = next(r for r in log if r["type"] == "init")
    assert "head.fc.weight" in json.dumps(init) and "head.fc.bias" in json.dumps(init)
    before = torch.load(ckpt, weights_only=True)["model"]
    after = torch.load(tmp_path / "ft" / "last.pt", weights_only=True)["model"]
    assert re.search(r"new in the model: .*classifier 2", json.dumps(init))
    for key, value in before.items():
        if not key.startswith("head.fc"):  # frozen backbone: unchanged after its epoch
            torch.testing.assert_close(after[key], value, rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("model", ["convnext_t", "convformer_s18", "fastvit_sa24"])
def test_five_second_clips_through_frontend_and_every_model(model):
    from conftest import cfgs

    from dcls_audio.data import LogMelFrontend

    spec = LogMelFrontend(erase_p=0.0)(torch.randn(1, 5 * 32000) * 0.1)
    assert spec.shape == (1, 1, 128, 501)
    net = build_model(*cfgs(model, "dcls_gauss", num_classes=3)).eval()
    with torch.no_grad():
        assert net(spec).shape == (1, 3)

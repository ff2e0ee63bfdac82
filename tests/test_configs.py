"""Every config composes; every Table-1 experiment equals the paper's Table 2 field by field."""

import inspect
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

# Paper Table 2 (the recipe the README cites), written out independently of the yaml files.
PAPER = {
    "trainer.epochs": 60,
    "trainer.warmup_epochs": 20,
    "trainer.global_batch_size": 4096,
    "optim.lr": 4e-3,
    "optim.lr_ref_batch": 4096,
    "optim.lr_min": 1e-6,
    "optim.warmup_lr_init": 0.0,
    "optim.weight_decay": 0.05,
    "optim.betas": [0.9, 0.999],
    "optim.eps": 1e-8,
    "optim.dcls_lr_scale": 5.0,
    "model.drop_path_rate": 0.4,
    "model.num_classes": 527,
    "model.in_chans": 1,
    "model.stem_kernel": [2, 16],
    "model.pretrained": None,
    "data.num_classes": 527,
    "augment.speed_p": 0.5,
    "augment.speed_range": [0.5, 1.5],
    "augment.erase_p": 0.25,
    "augment.mixup": True,
    "augment.mixup_alpha": 0.8,
    "augment.label_smoothing": 0.1,
}
# experiment -> (model.name, timm model, conv.name, optimizer, per-device batch)
ROWS = {
    "convnext_t_dsc": ("convnext_t", "convnext_tiny", "dsc", "adamw", 128),
    "convnext_t_dcls_gauss": ("convnext_t", "convnext_tiny", "dcls_gauss", "adamw", 128),
    "convformer_s18_dsc": ("convformer_s18", "convformer_s18", "dsc", "lamb", 64),
    "convformer_s18_dcls_gauss": ("convformer_s18", "convformer_s18", "dcls_gauss", "lamb", 64),
    "fastvit_sa24_dsc": ("fastvit_sa24", "fastvit_sa24", "dsc", "adamw", 128),
    "fastvit_sa24_dcls_gauss": ("fastvit_sa24", "fastvit_sa24", "dcls_gauss", "adamw", 128),
}
DCLS_GAUSS = {
    "type": "dcls",
    "kernel_size": 7,
    "dilated_kernel_size": 23,
    "kernel_count": 26,
    "version": "gauss",
    "share_positions": True,
    "position_init": "normal",
}
MODEL_KEYS = {
    "name",
    "timm_name",
    "num_classes",
    "drop_path_rate",
    "pretrained",
    "init",
    "in_chans",
}
# paper §3.1: ConvNeXt-T and ConvFormer-S18 rows start from ImageNet weights, FastViT from scratch
IMAGENET_ROWS = {n for n in ROWS if not n.startswith("fastvit")}


@pytest.fixture(scope="module")
def hydra_ctx():
    GlobalHydra.instance().clear()
    with initialize_config_module("dcls_audio.configs", version_base="1.3", job_name="test"):
        yield
    GlobalHydra.instance().clear()


def _get(cfg: DictConfig, dotted: str):
    value = OmegaConf.select(cfg, dotted, throw_on_missing=True)
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def _experiment(name: str, *extra: str, hydra_cfg: bool = False) -> DictConfig:
    """Compose ``experiment=table1/<name>`` with extra overrides."""
    overrides = [f"experiment=table1/{name}", *extra]
    return compose("train", overrides=overrides, return_hydra_config=hydra_cfg)


def test_plain_experiment_override(hydra_ctx):
    """`python train.py experiment=table1/...` (no '+') needs `experiment: null` in train.yaml."""
    cfg = compose("train", overrides=["experiment=table1/convformer_s18_dsc"])
    assert cfg.optim.name == "lamb" and cfg.trainer.batch_size == 64


def test_experiment_files_match_rows():
    found = {p.stem for p in (CONFIGS / "experiment" / "table1").glob("*.yaml")}
    assert found == set(ROWS)
    for name in ROWS:
        assert (
            (CONFIGS / "experiment" / "table1" / f"{name}.yaml")
            .read_text()
            .startswith("# @package _global_")
        )


@pytest.mark.parametrize("name", sorted(ROWS))
def test_experiment_equals_paper_table2(hydra_ctx, name):
    model, timm_name, conv, optim, batch = ROWS[name]
    cfg = _experiment(name)
    OmegaConf.resolve(cfg)
    for key, want in PAPER.items():
        got = _get(cfg, key)
        if isinstance(want, float):
            assert got == pytest.approx(want, rel=1e-12), key
        else:
            assert got == want, key
    assert cfg.model.name == model
    assert cfg.model.timm_name == timm_name
    assert cfg.conv.name == conv
    assert cfg.optim.name == optim
    assert cfg.trainer.batch_size == batch
    assert cfg.trainer.global_batch_size % batch == 0
    assert cfg.model.init == ("imagenet" if name in IMAGENET_ROWS else "none")
    if conv == "dcls_gauss":
        assert {k: cfg.conv[k] for k in DCLS_GAUSS} == DCLS_GAUSS
    else:
        assert cfg.conv.type == "dsc" and cfg.conv.kernel_size == 7
    # gradient clipping: none, except LAMB's own global norm clip at 1.0
    if optim == "lamb":
        assert cfg.optim.max_grad_norm == pytest.approx(1.0)
    else:
        assert cfg.optim.get("max_grad_norm") is None
    # AudioSet: balanced + unbalanced train, eval set, packaged 527-class label list
    assert any("balanced_train" in f for f in cfg.data.train_files)
    assert any("unbalanced_train" in f for f in cfg.data.train_files)
    assert [Path(f).name for f in cfg.data.eval_files] == ["eval.h5"]
    assert cfg.data.labels_file is None


def test_frontend_and_augmentation_defaults_equal_paper():
    """Table 2's audio values have no config key: they are the data module's defaults."""
    from dcls_audio.data import CLIP_SAMPLES, SAMPLE_RATE, LogMelFrontend, MultiLabelMixup
    from dcls_audio.data.waveform import WaveformAugment

    assert (SAMPLE_RATE, CLIP_SAMPLES) == (32000, 320000)
    fe = {k: p.default for k, p in inspect.signature(LogMelFrontend).parameters.items()}
    paper_fe = {"sample_rate": 32000, "n_fft": 1024, "hop_length": 320, "n_mels": 128}
    paper_fe |= {"f_min": 50.0, "f_max": 14000.0, "erase_p": 0.25}
    paper_fe |= {"mean": -18.2696, "std": 30.5735}
    assert {k: fe[k] for k in paper_fe} == paper_fe
    aug = WaveformAugment()
    assert (aug.length, aug.speed_p, aug.speed_range) == (320000, 0.5, (0.5, 1.5))
    mix = {k: p.default for k, p in inspect.signature(MultiLabelMixup).parameters.items()}
    assert (mix["alpha"], mix["label_smoothing"]) == (0.8, 0.1)


def _names(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


def test_every_model_and_conv_composes(hydra_ctx):
    models, convs = _names("model"), _names("conv")
    assert {"convnext_t", "convformer_s18", "fastvit_sa24"} <= set(models)
    assert {"dsc", "dcls_gauss"} <= set(convs)
    for model in models:
        for conv in convs:
            cfg = compose("train", overrides=[f"model={model}", f"conv={conv}", "data=synthetic"])
            OmegaConf.resolve(cfg)
            assert cfg.model.name == model and cfg.conv.name == conv
            assert MODEL_KEYS <= set(cfg.model) and {"name", "type"} <= set(cfg.conv)
            assert cfg.model.num_classes == cfg.data.num_classes == 16


def test_experiment_shrinks_to_synthetic_smoke_run(hydra_ctx):
    cfg = _experiment(
        "convnext_t_dcls_gauss", "data=synthetic", "trainer.max_steps=2", "trainer.batch_size=4"
    )
    OmegaConf.resolve(cfg)
    assert cfg.data.num_classes == cfg.model.num_classes == 16
    assert cfg.trainer.max_steps == 2 and cfg.trainer.batch_size == 4
    assert cfg.conv.name == "dcls_gauss"


def test_slurm_launcher_composes(hydra_ctx):
    cfg = _experiment("convnext_t_dcls_gauss", "hydra/launcher=slurm", hydra_cfg=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert launcher.gpus_per_node == launcher.tasks_per_node
    assert launcher.max_num_timeout > 0 and launcher.timeout_min > 0
    assert launcher.partition is None
    assert isinstance(OmegaConf.to_container(launcher.setup), list)
    # one key drives both; the launcher receives resolved numbers
    cfg = _experiment(
        "convnext_t_dcls_gauss",
        "hydra/launcher=slurm",
        "hydra.launcher.tasks_per_node=4",
        hydra_cfg=True,
    )
    HydraConfig.instance().set_config(cfg)
    params = instantiate(cfg.hydra.launcher).params
    assert params["gpus_per_node"] == params["tasks_per_node"] == 4
    assert params["max_num_timeout"] == cfg.hydra.launcher.max_num_timeout


def test_slurm_launcher_parameters_make_a_valid_sbatch_script(hydra_ctx, monkeypatch, tmp_path):
    """Feed the launcher's parameters to submitit as the plugin does (no cluster, no submission)."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from submitit.slurm.slurm import SlurmExecutor

    monkeypatch.setattr(SlurmExecutor, "affinity", classmethod(lambda cls: 1))  # "srun exists"
    cfg = _experiment(
        "fastvit_sa24_dcls_gauss",
        "hydra/launcher=slurm",
        "hydra.launcher.tasks_per_node=4",
        "hydra.launcher.nodes=2",
        hydra_cfg=True,
    )
    HydraConfig.instance().set_config(cfg)
    params = dict(instantiate(cfg.hydra.launcher).params)
    params.pop("submitit_folder")
    executor = submitit.AutoExecutor(
        cluster="slurm", folder=tmp_path, slurm_max_num_timeout=params.pop("max_num_timeout")
    )
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    # unknown keys would raise here
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    script = executor._executor._make_submission_file_text("python train.py", "uid")
    for line in ["--gpus-per-node=4", "--ntasks-per-node=4", "--nodes=2", "--time=1200"]:
        assert f"#SBATCH {line}\n" in script
    assert "--partition" not in script
    assert "export OMP_NUM_THREADS=1\n" in script
    assert executor._executor.max_num_timeout == cfg.hydra.launcher.max_num_timeout


@pytest.mark.parametrize("name", sorted(ROWS))
def test_table1_files_hold_only_what_differs_from_the_defaults(name):
    """A row names its groups; only ConvFormer's batch and the ImageNet init differ."""
    doc = yaml.safe_load((CONFIGS / "experiment" / "table1" / f"{name}.yaml").read_text())
    extra = {"trainer": {"batch_size": 64}} if name.startswith("convformer") else {}
    if name in IMAGENET_ROWS:
        extra["model"] = {"init": "imagenet"}
    assert {k: v for k, v in doc.items() if k != "defaults"} == extra
    assert all(next(iter(d)).startswith("override /") for d in doc["defaults"])


def test_group_keys_are_the_model_builders_keys():
    """Every model/conv config holds exactly the keys build_model reads (no code defaults)."""
    from dcls_audio.models import CONV_KEYS, MODEL_KEYS

    for name in _names("model"):
        assert set(yaml.safe_load((CONFIGS / "model" / f"{name}.yaml").read_text())) == set(
            MODEL_KEYS
        ), name
    for name in _names("conv"):
        doc = yaml.safe_load((CONFIGS / "conv" / f"{name}.yaml").read_text())
        assert set(doc) == set(CONV_KEYS[doc["type"]]), name
    assert _names("augment") == ["none", "paper"]
    keys = {
        n: set(yaml.safe_load((CONFIGS / "augment" / f"{n}.yaml").read_text()))
        for n in ("none", "paper")
    }
    assert keys["none"] == keys["paper"]


def test_a_key_missing_from_the_config_is_an_error_not_a_default(hydra_ctx):
    from dcls_audio.models import build_model

    cfg = compose("train", overrides=["model=convnext_atto", "conv=dsc", "~model.drop_path_rate"])
    with pytest.raises(ValueError, match=r"model config: missing key\(s\) \['drop_path_rate'\]"):
        build_model(cfg.model, cfg.conv)


def test_demo_config_builds_a_small_dcls_convnext(hydra_ctx):
    from dcls_audio.dcls import Dcls2d
    from dcls_audio.models import build_model

    cfg = compose("train", overrides=["experiment=demo", "data.num_classes=19"])
    assert cfg.conv.name == "dcls_gauss" and cfg.conv.kernel_count == 26
    assert cfg.conv.position_init == "uniform" and cfg.data.clip_seconds == 5.0
    assert cfg.data.root == "data/sounds" and cfg.trainer.device == "cpu"
    model = build_model(cfg.model, cfg.conv)
    dcls = [m for m in model.modules() if isinstance(m, Dcls2d)]
    assert len(dcls) == 6 and {m.dilated_kernel_size for m in dcls} == {(11, 11)}
    assert [s.blocks[0].gamma[0].item() for s in model.stages] == pytest.approx([0.1] * 4)
    assert 0.6e6 < sum(p.numel() for p in model.parameters()) < 0.8e6


@pytest.mark.parametrize("name", sorted(ROWS))
def test_imagenet_rows_fail_at_build_naming_the_file(hydra_ctx, name):
    """Without model.pretrained an ImageNet row stops before training and says what to supply."""
    from dcls_audio.models import build_model

    cfg = _experiment(name, "data=synthetic", "model.drop_path_rate=0.0")
    if name not in IMAGENET_ROWS:
        assert cfg.model.init == "none" and cfg.model.pretrained is None
        return
    want = "convnext_dcls_gauss_tiny_1k_224_ema.pth" if name == "convnext_t_dcls_gauss" else ""
    with pytest.raises(ValueError, match=rf"model.init=imagenet needs model.pretrained=.*{want}"):
        build_model(cfg.model, cfg.conv)


def test_default_config_trains_from_scratch(hydra_ctx):
    cfg = compose("train")
    assert cfg.model.init == "none" and cfg.model.pretrained is None

"""Train a DCLS-audio tagger: ``python train.py [group=option ...] [key=value ...]``."""

import hydra
from omegaconf import DictConfig

from dcls_audio.train import run


@hydra.main(config_path="configs", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Hydra entry point; see dcls_audio/train/runner.py for usage."""
    run(cfg)


if __name__ == "__main__":
    main()

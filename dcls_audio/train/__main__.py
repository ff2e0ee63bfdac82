"""``dcls-audio-train`` / ``python -m dcls_audio.train``: the Hydra app of ``train.py``.

Same configs (shipped as ``dcls_audio.configs``), same overrides, from any directory.
"""

import hydra
from omegaconf import DictConfig

from dcls_audio.train import run


@hydra.main(config_path="pkg://dcls_audio.configs", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Hydra entry point; see dcls_audio/train/runner.py for usage."""
    run(cfg)


if __name__ == "__main__":
    main()

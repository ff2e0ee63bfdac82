"""The training configs, also importable as the package ``dcls_audio.configs``."""

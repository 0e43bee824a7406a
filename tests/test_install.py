"""CI installs exactly as the README tells users to, so CI catches the next gap a user would meet; and the
llama.cpp this install built is the portable one."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def readme_block(marker: str) -> list[str]:
    """The commands of the README code block between ``<!-- marker -->`` and ``<!-- /marker -->``."""
    text = (REPO / "README.md").read_text()
    found = re.search(rf"<!-- {marker} -->\s*```bash\n(.*?)```\s*<!-- /{marker} -->", text, re.DOTALL)
    assert found, f"README has no {marker} block"
    commands = []
    for line in found.group(1).splitlines():
        command = re.sub(r"\s+#.*$", "", line).strip()
        if command and not command.startswith("git clone"):  # CI runs in the clone
            commands.append(command.removeprefix("sudo "))
    return commands


def ci_commands() -> list[str]:
    lines = (REPO / ".ci" / "run").read_text().splitlines()
    return [re.sub(r"\s+#.*$", "", line).strip() for line in lines]


def test_ci_runs_the_readme_install_and_test_setup_verbatim_and_in_order() -> None:
    ci = ci_commands()
    position = -1
    for marker in ("install", "test-setup"):
        for command in readme_block(marker):
            where = [i for i, line in enumerate(ci) if command in line]
            assert where, f"README {marker} command not in .ci/run: {command}"
            assert where[0] > position, f"out of order in .ci/run: {command}"
            position = where[0]
    assert any(line.startswith("python -m pytest -q") for line in ci[position:])


def test_the_install_builds_llama_cpp_for_any_x86_64_cpu_with_avx2() -> None:
    install = " ".join(readme_block("install"))
    args = re.search(r'CMAKE_ARGS="([^"]+)"', install)
    assert args, "the README install sets no CMAKE_ARGS"
    flags = args.group(1).split()
    assert "-DGGML_NATIVE=OFF" in flags  # nothing chosen from the build machine's CPU
    assert not any(f.startswith(("-DGGML_AVX512", "-DGGML_AMX")) for f in flags)
    from crescent_distilabel.doctor import PORTABLE_CMAKE_ARGS

    assert PORTABLE_CMAKE_ARGS.split() == flags  # what `crescent doctor` tells users to rebuild with


def test_the_installed_llama_cpp_has_no_instructions_a_vm_may_refuse() -> None:
    from crescent_distilabel.doctor import RISKY_FEATURES, llamacpp_features

    features = llamacpp_features()
    assert features, "llama_cpp does not import"
    assert features.get("AVX2") and features.get("FMA")
    assert not [name for name, on in features.items() if on and name.startswith(RISKY_FEATURES)], features

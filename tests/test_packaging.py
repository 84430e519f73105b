"""Packaging: the PEP 639 license, and every tool ./run installs pinned by constraints.txt.

A fresh `./run setup` must install the same versions next year as today: pyproject.toml keeps
the ranges panicd works with, constraints.txt the exact versions, and ./run hands that file
to every pip install (as -c for .venv, as --build-constraint for pip's isolated builds).
"""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess
import sys
import tomllib
from email.parser import HeaderParser
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
CONSTRAINTS = ROOT / "constraints.txt"
#: The header in constraints.txt after which pins are for `./run bench` only.
BENCH_HEADER = "# ./run bench only"


def pins() -> dict[str, str]:
    """constraints.txt as {canonical name: version}; every line must be an exact pin."""
    out: dict[str, str] = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        req = Requirement(line)
        (spec,) = req.specifier
        assert spec.operator == "==" and not req.extras and req.marker is None, line
        name = canonicalize_name(req.name)
        assert name not in out, f"{name} is pinned twice"
        out[name] = spec.version
    return out


def bench_only() -> set[str]:
    text = CONSTRAINTS.read_text()
    assert BENCH_HEADER in text
    tail = text.split(BENCH_HEADER, 1)[1].splitlines()[1:]
    return {canonicalize_name(Requirement(line).name) for line in tail
            if line.strip() and not line.startswith("#")}


def declared_requirements() -> list[Requirement]:
    project = PYPROJECT["project"]
    texts = [*project["dependencies"], *PYPROJECT["build-system"]["requires"]]
    for extra in project["optional-dependencies"].values():
        texts += extra
    return [Requirement(t) for t in texts]


def test_every_declared_dependency_is_pinned_inside_its_range() -> None:
    pinned = pins()
    for req in declared_requirements():
        name = canonicalize_name(req.name)
        assert name in pinned, f"{req} is not pinned in constraints.txt"
        assert req.specifier.contains(pinned[name], prereleases=True), (
            f"constraints.txt pins {name}=={pinned[name]}, outside pyproject.toml's {req}")


def test_the_build_backend_is_pinned_exactly_and_the_same_as_for_other_builds() -> None:
    pinned = pins()
    for text in PYPROJECT["build-system"]["requires"]:
        req = Requirement(text)
        (spec,) = req.specifier
        assert spec.operator == "==", f"[build-system] requires {text}: pin it exactly"
        assert pinned[canonicalize_name(req.name)] == spec.version


def test_the_venv_holds_exactly_the_pinned_versions() -> None:
    # Drift either way fails: a package .venv has but constraints.txt lacks (a new transitive
    # dependency), or one at another version (an upstream release ./run did not ask for).
    pinned = pins()
    installed = {canonicalize_name(d.metadata["Name"]): d.version
                 for d in importlib.metadata.distributions()}
    installed.pop(canonicalize_name("panicd"))
    wrong = {n: (v, pinned.get(n)) for n, v in installed.items() if pinned.get(n) != v}
    assert not wrong, f"installed vs constraints.txt (run ./run setup, or fix the pins): {wrong}"
    # Every pin outside the bench group is something ./run setup installs.
    missing = set(pinned) - set(installed) - bench_only()
    assert not missing, f"pinned but never installed by ./run setup: {sorted(missing)}"


def test_run_passes_the_constraints_to_every_pip_install_and_to_its_stamp() -> None:
    script = (ROOT / "run").read_text()
    installs = [line for line in script.splitlines() if re.search(r'pip"? install', line)]
    assert installs
    for line in installs:
        assert "-c constraints.txt" in line, line
    # pip 26 no longer applies -c to isolated build environments (systemd-python builds from
    # source in one): the build constraint must be there for every install after pip's own.
    assert any("--build-constraint constraints.txt" in line for line in installs)
    for line in installs:
        if "--build-constraint" not in line:
            assert "pip setuptools" in line, f"only pip's own upgrade may skip it: {line}"
    assert re.search(r"want=\$\(cat pyproject.toml constraints.txt \| sha256sum", script)


def test_license_is_an_spdx_expression_with_its_text_in_the_distribution(tmp_path: Path) -> None:
    # Build the metadata as pip would, with the pinned setuptools .venv holds; setuptools
    # deprecated `license = {text = ...}` (builds fail from 2027-02-18) and says so on stderr.
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "panicd", tmp_path / "panicd",
                    ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path / "out"
    out.mkdir()
    build = subprocess.run(
        [sys.executable, "-c",
         "import sys; from setuptools import build_meta as b; "
         "print(b.prepare_metadata_for_build_wheel(sys.argv[1]))", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
    assert build.returncode == 0, build.stderr
    assert "deprecat" not in (build.stdout + build.stderr).lower(), build.stderr
    dist_info = out / build.stdout.strip().splitlines()[-1]
    metadata = HeaderParser().parsestr((dist_info / "METADATA").read_text())
    assert metadata["License-Expression"] == "GPL-2.0-or-later"
    assert metadata.get_all("License-File") == ["LICENSE"]
    assert (dist_info / "licenses" / "LICENSE").read_text() == (ROOT / "LICENSE").read_text()
    assert (ROOT / "LICENSE").read_text().split()[:6] == [
        "GNU", "GENERAL", "PUBLIC", "LICENSE", "Version", "2,"]

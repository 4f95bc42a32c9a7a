"""The lock files in requirements/ match pyproject.toml: every install (scripts/setup.sh, the
Dockerfiles) gets the same versions on every machine, and a dependency changed in pyproject
without re-locking (scripts/lock.sh) fails here."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _pins(lock: Path) -> dict[str, str]:
    pins = {}
    for line in lock.read_text().splitlines():
        if line and not line.startswith((" ", "#")):
            name, version = re.split(r"==", line.split(";")[0].strip(), maxsplit=1)
            pins[canonicalize_name(name)] = version
    return pins


def _direct(extras: list[str]) -> list[Requirement]:
    reqs = [Requirement(r) for r in PROJECT["dependencies"]]
    todo, seen = list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for r in map(Requirement, PROJECT["optional-dependencies"][extra]):
            if canonicalize_name(r.name) == canonicalize_name(PROJECT["name"]):
                todo += sorted(r.extras)
            else:
                reqs.append(r)
    return reqs


LOCKS = sorted((ROOT / "requirements").glob("*.txt"))


def test_there_is_a_lock_for_every_extra_and_the_setup_installs():
    names = {p.stem for p in LOCKS}
    assert {"base", "worker-broker", "all"} | set(PROJECT["optional-dependencies"]) <= names


@pytest.mark.parametrize("lock", LOCKS, ids=[p.stem for p in LOCKS])
def test_lock_pins_satisfy_pyproject(lock):
    extras = [] if lock.stem == "base" else lock.stem.split("-")
    pins = _pins(lock)
    for req in _direct(extras):
        name = canonicalize_name(req.name)
        assert name in pins, f"{lock.name} lacks {req.name}: run scripts/lock.sh"
        version = pins[name].split("+")[0]
        assert req.specifier.contains(version, prereleases=True), \
            f"{lock.name} pins {req.name}=={pins[name]}, pyproject wants {req.specifier}"


def test_faust_and_aiokafka_are_pinned_exactly():
    exact = {canonicalize_name(r.name): str(r.specifier)
             for r in map(Requirement, PROJECT["dependencies"] + PROJECT["optional-dependencies"]["worker"])}
    assert exact["faust-streaming"].startswith("==") and exact["aiokafka"].startswith("==")

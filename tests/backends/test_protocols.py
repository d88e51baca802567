"""The backend seam: ``Backend`` and ``Exporter`` are typed protocols; importing them loads no framework,
and the check that tests/backends/keras and tests/backends/torch run against each framework's modules
(``protocol_mismatches``) names whatever a module lacks."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace
from typing import Optional, Protocol

from helpers import protocol_mismatches


def test_importing_the_backends_package_loads_neither_framework():
    code = ("import sys; from imagebench.backends import Backend, Exporter, get_backend, get_exporter; "
            "print(sorted({'tensorflow', 'keras', 'torch'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


class Trainer(Protocol):
    NAME: str

    def fit(self, model, data, budget: Optional[int] = None) -> dict:
        """Train."""


def fit(model, data, budget=None, verbose=False):
    return {}


def renamed(model, dataset, budget=None):
    return {}


def without_default(model, data, budget):
    return {}


def extra_required(model, data, budget=None, *, seed):
    return {}


def test_a_module_with_every_member_and_compatible_parameters_satisfies_the_protocol():
    assert protocol_mismatches(SimpleNamespace(NAME="x", fit=fit), Trainer) == []


def test_each_missing_member_or_incompatible_signature_is_named():
    assert protocol_mismatches(SimpleNamespace(fit=fit), Trainer) == ["NAME is missing"]
    assert protocol_mismatches(SimpleNamespace(NAME="x"), Trainer) == ["fit() is missing"]
    assert protocol_mismatches(SimpleNamespace(NAME="x", fit="not callable"), Trainer) == ["fit() is missing"]
    assert protocol_mismatches(SimpleNamespace(NAME="x", fit=renamed), Trainer) == [
        "fit(): parameter 2 is dataset, the protocol says data"]
    assert protocol_mismatches(SimpleNamespace(NAME="x", fit=without_default), Trainer) == [
        "fit(): budget needs a default (the protocol's: budget=None)"]
    assert protocol_mismatches(SimpleNamespace(NAME="x", fit=extra_required), Trainer) == ["fit(): extra parameter seed has no default"]

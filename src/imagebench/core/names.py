"""The one rule for a name that becomes part of a path (issue 20).

Experiment names become ``results/<experiment>/``, run names ``runs/<run name>.record``, model and
framework names ``models/<framework>-<model>/`` and registered-model names. Some are typed by the
user (a sweep file's ``experiment:``, ``--experiment``), others are read from MLflow, where anyone
on a shared server can create an experiment or a run with any name. A name is used as it is when
it follows the rule below and refused otherwise, whatever its source: never rewritten, because two
rewritten names could share one folder and pruning one experiment's weights would delete the
other's.
"""

from __future__ import annotations

import re
from typing import Any

from imagebench.core.params import ParamsError

MAX_NAME_LENGTH = 100  # leaves room for suffixes (".record", ".rung3.ipynb") within a file name's 255 bytes
NAME_RULE = (f"letters A-Z a-z, digits, '.', '_' and '-', starting with a letter or digit (so no '/', no '..', "
             f"no spaces), at most {MAX_NAME_LENGTH} characters")  # fmt: skip
_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class UnsafeName(ParamsError):
    """A name that cannot become a folder or file name (it could point outside its folder)."""


def is_safe(name: Any) -> bool:
    return isinstance(name, str) and len(name) <= MAX_NAME_LENGTH and _SAFE.fullmatch(name) is not None


def safe_name(name: Any, what: str, fix: str = "") -> str:
    """``name`` itself when it may name a folder or file, else ``UnsafeName`` naming ``what`` and the rule.

    ``what`` says which name it is and where it came from (e.g. "params/x.yaml: experiment", "run
    name"); ``fix`` says what to do instead.
    """
    if is_safe(name):
        return name
    shown = repr(name)
    if len(shown) > 2 * MAX_NAME_LENGTH:  # a pasted paragraph: the start names it
        shown = shown[: 2 * MAX_NAME_LENGTH] + "..."
    raise UnsafeName(f"{what} {shown} cannot be used as a folder or file name; use {NAME_RULE}" + (f". {fix}" if fix else ""))

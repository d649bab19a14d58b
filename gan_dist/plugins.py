"""Plug-ins: a user's own models and losses, named in the config, without a fork of gan-dist.

`model.arch` and `loss.kind` take a built-in name, the name of an entry point that an
installed package registers in the group `gan_dist.models` or `gan_dist.losses`
(`[project.entry-points."gan_dist.models"]` in its pyproject.toml), or a `module:attr` path.
A built-in name wins over an entry point of the same name.

Names are checked without importing anything (`check_name`: the config does it); a plug-in
is imported, explicitly and once per process, when it is first used (`load`). Every error
names the plug-in and where it came from, on one line (`PluginError`, a ValueError: the CLI
prints it and exits 2). Nothing here knows torch: what a plug-in must be is checked by its
user (gan_dist.models, gan_dist.losses, gan_dist.plan).
"""

from __future__ import annotations

import functools
import importlib
import importlib.machinery
import importlib.metadata
import importlib.util
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from gan_dist.config import first_line

MODEL_GROUP = "gan_dist.models"
LOSS_GROUP = "gan_dist.losses"

# module.sub:attr.attr, as entry points write their objects.
PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


class PluginError(ValueError):
    """A plug-in that cannot be found, imported or used as it must be."""


@dataclass(frozen=True)
class Plugin:
    name: str  # as the config gives it
    target: str  # the module:attr it was loaded from
    obj: Any
    distribution: str = ""  # the installed package that registers it (entry points only)

    @property
    def label(self) -> str:
        """The plug-in for an error message: its name and, for an entry point, what it points to."""
        return self.name if self.name == self.target else f"{self.name} (entry point {self.target})"


def is_path(name: str) -> bool:
    return ":" in name


def entry_points(group: str) -> dict[str, importlib.metadata.EntryPoint]:
    """The installed entry points of `group` by name (reading package metadata: imports nothing)."""
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=group)}


def check_name(key: str, name: str, group: str, builtins: Iterable[str]) -> None:
    """`name` is a built-in, an installed entry point of `group`, or a well-formed module:attr
    path; a PluginError naming config key `key` otherwise. Imports nothing."""
    builtins = sorted(builtins)
    if name in builtins:
        return
    if is_path(name):
        if not PATH.fullmatch(name):
            raise PluginError(f"{key} {name!r} is not a module:attr path (such as my_package.models:build)")
        return
    installed = entry_points(group)
    if name not in installed:
        found = f"installed: {', '.join(sorted(installed))}" if installed else "none installed"
        raise PluginError(f"{key} {name!r} is not a built-in ({', '.join(builtins)}), an entry point of the group "
                          f"{group} ({found}), or a module:attr path")


@functools.cache
def load(key: str, name: str, group: str) -> Plugin:
    """Import plug-in `name` (an entry point of `group` or a module:attr path) and return what
    it names. Cached: a plug-in is imported once per process."""
    if is_path(name):
        return Plugin(name, name, _import(key, name, name))
    ep = entry_points(group).get(name)
    if ep is None:
        raise PluginError(f"{key} {name!r}: no entry point of that name in the group {group} is installed")
    dist = ep.dist.name if ep.dist is not None else ""
    return Plugin(name, ep.value, _import(key, f"{name} (entry point {ep.value})", ep.value), dist)


def _import(key: str, label: str, target: str) -> Any:
    module_name, _, attr = target.partition(":")
    _search_current_folder(module_name)
    try:
        obj = importlib.import_module(module_name.strip())
    except Exception as exc:  # a missing module, or any error in the user's module as it loads
        raise PluginError(f"{key} {label}: cannot import {module_name} ({type(exc).__name__}: "
                          f"{first_line(exc)})") from None
    for part in attr.strip().split("."):
        if not hasattr(obj, part):
            raise PluginError(f"{key} {label}: {module_name} has no attribute {attr}")
        obj = getattr(obj, part)
    return obj


def _search_current_folder(module_name: str) -> None:
    """A module path such as `my_gan:build` also finds my_gan.py in the current folder, as
    Ray's workers do (they put the driver's current folder on their path), whether gan-dist
    was started as `gan-dist` or `python -m gan_dist`. Appended last: it never shadows an
    installed module."""
    top = module_name.strip().split(".")[0]
    here = os.getcwd()
    if (here not in sys.path and importlib.util.find_spec(top) is None
            and importlib.machinery.PathFinder.find_spec(top, [here]) is not None):
        sys.path.append(here)


# Shipping a plug-in's code with a job ----------------------------------------------------

def code_paths(key: str, name: str, group: str) -> list[Path]:
    """What a job on a cluster needs to use plug-in `name`: the folder (or file) of its
    top-level module and, for an entry point, its package's .dist-info folder (so that the
    name resolves there too). Found here without importing the plug-in; [] for gan-dist's own
    modules, which travel with gan-dist."""
    if is_path(name):
        target, dist = name, None
    else:
        ep = entry_points(group).get(name)
        if ep is None:
            raise PluginError(f"{key} {name!r}: no entry point of that name in the group {group} is installed")
        target, dist = ep.value, ep.dist
    top = target.partition(":")[0].strip().split(".")[0]
    if top == "gan_dist":
        return []
    _search_current_folder(top)
    spec = importlib.util.find_spec(top)
    if spec is None:
        raise PluginError(f"{key} {name}: the module {top} is not importable here, so it cannot be shipped with "
                          f"the job (install it here, e.g. pip install -e ., or add its folder to PYTHONPATH)")
    if spec.submodule_search_locations is not None:
        locations = list(spec.submodule_search_locations)
        if len(locations) != 1:
            raise PluginError(f"{key} {name}: {top} is a namespace package spread over {len(locations)} folders; "
                              f"ship it in the job's image instead")
        paths = [Path(locations[0])]
    elif spec.origin and spec.origin.endswith(".py"):
        paths = [Path(spec.origin)]
    else:
        raise PluginError(f"{key} {name}: {top} is not a Python source module or package ({spec.origin}); "
                          f"ship it in the job's image instead")
    if dist is not None:
        info = dist_info_folder(dist)
        if info is None:
            raise PluginError(f"{key} {name}: the metadata of {dist.name}, which registers it, is not in a "
                              f".dist-info folder; use the module:attr path {target} instead")
        paths.append(info)
    return paths


def dist_info_folder(dist: importlib.metadata.Distribution) -> Path | None:
    """The .dist-info folder holding an installed distribution's metadata (its entry points)."""
    for file in dist.files or ():
        if file.name == "METADATA" and file.parent.name.endswith(".dist-info"):
            return Path(dist.locate_file(file)).parent
    return None

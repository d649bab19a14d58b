"""What to say when this Python lacks a package gan-dist needs (standard library only: it is
what runs when the rest cannot be imported).

The usual cause is a Ray cluster started from a virtual environment without activating it:
the job's `python` is another interpreter, and a raw ModuleNotFoundError traceback in the
job log does not say which one, nor what to do."""

from __future__ import annotations

import sys

# Import names whose package is named otherwise on PyPI.
PACKAGES = {"yaml": "PyYAML", "PIL": "Pillow", "google": "protobuf"}


def missing_dependency(exc: ModuleNotFoundError) -> str:
    """One line naming the missing package, the interpreter that lacks it, and what to do."""
    module = (exc.name or "").split(".")[0] or "a module"
    if module == "gan_dist":
        return (f"gan-dist: error: gan-dist's own module {exc.name} is missing from the installation that "
                f"{sys.executable} imports: reinstall gan-dist")
    package = PACKAGES.get(module, module)
    return (f"gan-dist: error: this Python ({sys.executable}) lacks {package}, which gan-dist needs: install "
            f"gan-dist with its dependencies into it (pip install gan-dist, or pip install -e . in a checkout), "
            f"or run the `python` of the environment that has them (for a Ray cluster: start `ray` from that "
            f"environment, or submit with --pip)")

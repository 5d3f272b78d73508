"""Helpers for the deploy/ tests: the chart rendered offline (helm-python-sdk = Helm v4 Go SDK over
ctypes; no helm binary, no cluster, no network) with the default values and each shipped overlay."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "syllabus"
DOCKER = ROOT / "deploy" / "docker"
RELEASE, NAMESPACE = "syl", "ml"

# The overlays a user passes with -f; None = the chart's defaults only.
OVERLAYS = {"default": None, "gpu": "values-gpu.yaml", "external": "values-external.yaml"}


def overlay_values(name: str) -> dict | None:
    path = OVERLAYS[name]
    return None if path is None else yaml.safe_load((CHART / path).read_text())


def render(values: dict | None = None) -> dict[str, str]:
    """`helm template` of the chart: {template path: rendered text}."""
    import helm_python as helm

    with helm.Chart.load(str(CHART)) as chart:
        return chart.render(values=values, name=RELEASE, namespace=NAMESPACE, is_install=True)


def manifests(rendered: dict[str, str]) -> list[dict]:
    """Every Kubernetes object in a render (NOTES.txt and empty documents left out)."""
    docs = []
    for path, text in rendered.items():
        if path.endswith("NOTES.txt"):
            continue
        docs += [d for d in yaml.safe_load_all(text) if d]
    return docs

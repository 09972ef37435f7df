"""Hypothesis profiles and the automatic skip of GPU tests on machines without one."""

import os

import pytest
from hypothesis import HealthCheck, settings

import gpu

settings.register_profile("dev", max_examples=15, deadline=None)
settings.register_profile(
    "ci",
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
# Under compute-sanitizer every launch is 10-100x slower: few examples, same shapes.
settings.register_profile(
    "sanitizer",
    max_examples=6,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

GPU_OK, GPU_WHY = gpu.available(), gpu.why_unavailable()


def pytest_report_header(config):
    return f"GPU: {GPU_OK} ({GPU_WHY or gpu.device_summary()})"


def pytest_collection_modifyitems(config, items):
    if GPU_OK:
        return
    skip = pytest.mark.skip(reason=f"no GPU: {GPU_WHY}")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)

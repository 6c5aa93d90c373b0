"""Ad-hoc clients of a tier pod's Triton model and of metrics endpoints (tests, benchmarks).

`generate_http` and `generate_grpc` send one request with tritonclient and return the PNG
files, encoded as the router encodes its requests (`duotone_router.backends.triton_inputs`);
`scrape_metrics` reads a Prometheus endpoint into samples.
"""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from duotone_contracts import triton
from duotone_contracts.limits import RawRequest
from duotone_router.backends import triton_inputs

ImageRequest = RawRequest
"""A request as a client sends it: the same record the model validates (None: tier default)."""


def client_inputs(module: Any, request: ImageRequest) -> list[Any]:
    """`request` as `module`'s InferInput list (module: tritonclient.http or tritonclient.grpc)."""
    return triton_inputs(module, request.values())


def pngs(result: Any) -> list[bytes]:
    """The PNG files of an inference result."""
    images = result.as_numpy(triton.IMAGES)
    return [bytes(image) for image in images.reshape(-1)]


def generate_http(
    client: Any, request: ImageRequest, model: str = triton.DEFAULT_MODEL_NAME
) -> list[bytes]:
    """One request through `tritonclient.http.InferenceServerClient`; raises its error."""
    outputs = [httpclient.InferRequestedOutput(triton.IMAGES, binary_data=True)]
    return pngs(client.infer(model, client_inputs(httpclient, request), outputs=outputs))


def generate_grpc(
    client: Any, request: ImageRequest, model: str = triton.DEFAULT_MODEL_NAME
) -> list[bytes]:
    """One request through `tritonclient.grpc.InferenceServerClient`; raises its error."""
    outputs = [grpcclient.InferRequestedOutput(triton.IMAGES)]
    return pngs(client.infer(model, client_inputs(grpcclient, request), outputs=outputs))


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Sample:
    """One Prometheus sample."""

    name: str
    labels: Mapping[str, str]
    value: float


def parse_metrics(text: str) -> list[Sample]:
    """Prometheus text exposition -> samples (comments skipped)."""
    samples = []
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None or line.startswith("#"):
            continue
        name, labels, value = match.groups()
        samples.append(Sample(name, dict(_LABEL.findall(labels or "")), float(value)))
    return samples


def scrape_metrics(url: str, timeout: float = 5.0) -> list[Sample]:
    """Fetch and parse a metrics endpoint such as http://127.0.0.1:8002/metrics."""
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - http(s) only
        return parse_metrics(response.read().decode(errors="replace"))


def metric_sum(samples: list[Sample], name: str, **labels: str) -> float:
    """Sum of the samples called `name` whose labels include `labels`."""
    return sum(
        s.value
        for s in samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )

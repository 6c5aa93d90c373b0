"""The operator's rendered routing table and tier documents round-trip through the very
functions the router and the runtime parse them with: one author, one reader, one model."""

from __future__ import annotations

from pathlib import Path

import pytest

from duotone_contracts.api import ImageModelDeployment, parse_imd
from duotone_contracts.routing_table import ROUTING_TABLE_FILE, parse_routing_table
from duotone_contracts.tier import TIER_DOCUMENT_FILE, TierDocument, parse_tier_document
from duotone_operator.render.children import render_children
from duotone_operator.render.objects import RenderSettings
from duotone_operator.render.router import routing_table
from duotone_router import app as router_app
from duotone_router.discovery import StaticFileDiscovery
from duotone_runtime import cli as runtime_cli
from duotone_runtime import triton_config
from duotone_runtime.launcher import ServeOptions, model_parameters
from tests.support.builders import imd
from tests.support.manifests import load_examples

pytestmark = pytest.mark.unit


def _deployments() -> list[ImageModelDeployment]:
    examples = []
    for _, manifest in load_examples():
        manifest["metadata"] |= {
            "namespace": "images",
            "uid": f"uid-{manifest['metadata']['name']}",
        }
        examples.append(parse_imd(manifest))
    keyed = (
        imd("keyed")
        .tier("efficient")
        .tier("flagship")
        .router(apiKeysSecretRef={"name": "keys"}, rateLimit={"requestsPerMinutePerKey": 5})
        .build()
    )
    keyed["metadata"] |= {"namespace": "ns", "uid": "uid-keyed"}
    return [*examples, parse_imd(keyed)]


CASES = [pytest.param(d, id=d.metadata.name) for d in _deployments()]


def _config_maps(deployment: ImageModelDeployment) -> dict[str, dict[str, str]]:
    children = render_children(deployment, RenderSettings())
    return {c["metadata"]["name"]: c["data"] for c in children if c["kind"] == "ConfigMap"}


def test_the_router_and_the_runtime_read_with_the_contracts_own_parsers() -> None:
    assert router_app.parse_routing_table is parse_routing_table
    assert runtime_cli.parse_tier_document is parse_tier_document


@pytest.mark.parametrize("deployment", CASES)
def test_routing_table_round_trips_through_the_routers_parser(
    deployment: ImageModelDeployment, tmp_path: Path
) -> None:
    text = _config_maps(deployment)[f"{deployment.metadata.name}-router-config"][ROUTING_TABLE_FILE]
    table = parse_routing_table(text)
    assert table.model_dump() == routing_table(deployment).model_dump()
    assert table.to_json() == text, "the one writer reproduces the ConfigMap byte for byte"
    assert set(table.tiers) == set(deployment.spec.tiers.present())
    # The router process loads the mounted file into the same model.
    path = tmp_path / ROUTING_TABLE_FILE
    path.write_text(text)
    router = router_app.Router(path, StaticFileDiscovery(tmp_path / "backends.json"))
    assert router.table == table


@pytest.mark.parametrize("deployment", CASES)
def test_tier_documents_round_trip_through_the_runtime(
    deployment: ImageModelDeployment, tmp_path: Path
) -> None:
    maps = _config_maps(deployment)
    for name, spec in deployment.spec.tiers.present().items():
        text = maps[f"{deployment.metadata.name}-{name}-config"][TIER_DOCUMENT_FILE]
        path = tmp_path / f"{name}.json"
        path.write_text(text)
        # What `duotone-runtime serve --config <mounted tier.json>` serves ...
        args = runtime_cli._parser().parse_args(["serve", "--config", str(path)])
        served = runtime_cli._tier(args)
        assert served == TierDocument(name, spec)
        assert served.to_json() == text
        # ... and what its Triton model is handed in config.pbtxt (parsed again there).
        options = ServeOptions(tier=served, device="cpu")
        handed = model_parameters(options)["tier"]
        assert parse_tier_document(handed) == served
        assert triton_config.pbtxt_string(handed) in triton_config.render_config_pbtxt(
            model_name="duotone",
            batching=served.spec.batching,
            instance_kind="KIND_CPU",
            parameters={"tier": handed},
        )

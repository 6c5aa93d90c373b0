"""The Kubernetes adapter's credentials: Kopf gets the same token as the client, without scheme."""

from __future__ import annotations

from pathlib import Path

import pytest
from kubernetes import client as k8s
from kubernetes.config.incluster_config import InClusterConfigLoader

from duotone_operator.adapters.kubernetes import bearer_token, connection_info

TOKEN = "eyJhbGciOi.payload.signature"  # noqa: S105 - a made-up service account token


@pytest.mark.parametrize(
    ("api_key", "token"),
    [
        pytest.param("Bearer abc.def", "abc.def", id="kubeconfig loader: Bearer"),
        pytest.param("bearer abc.def", "abc.def", id="in-cluster loader: lower-case bearer"),
        pytest.param("BEARER \tabc.def", "abc.def", id="any case, any whitespace"),
        pytest.param("abc.def", "abc.def", id="a raw token is kept"),
        pytest.param("bearerabc", "bearerabc", id="no whitespace: part of the token"),
        pytest.param("bearer abc.def\n", "abc.def", id="a token file's newline is dropped"),
        pytest.param("", None, id="empty: no token"),
        pytest.param(None, None, id="absent: no token"),
    ],
)
def test_bearer_token(api_key: str | None, token: str | None) -> None:
    assert bearer_token(api_key) == token


def test_in_cluster_credentials_reach_kopf_as_the_raw_token(tmp_path: Path) -> None:
    (tmp_path / "token").write_text(TOKEN)
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    configuration = k8s.Configuration()
    InClusterConfigLoader(
        token_filename=str(tmp_path / "token"),
        cert_filename=str(tmp_path / "ca.crt"),
        environ={"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"},
    ).load_and_set(client_configuration=configuration)  # type: ignore[no-untyped-call]
    assert configuration.api_key["BearerToken"].startswith("bearer "), "the loader's own format"

    info = connection_info(configuration)
    assert info.scheme == "Bearer"
    assert info.token == TOKEN
    assert info.server == "https://10.96.0.1:443"
    assert info.ca_path == str(tmp_path / "ca.crt")


def test_kubeconfig_token_reaches_kopf_without_its_scheme() -> None:
    configuration = k8s.Configuration(host="https://127.0.0.1:6443")
    configuration.api_key["authorization"] = "Bearer kubeconfig-token"
    info = connection_info(configuration)
    assert (info.scheme, info.token) == ("Bearer", "kubeconfig-token")

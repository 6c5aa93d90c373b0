"""Loading real diffusers pipelines from every kind of model source (torch on CPU, offline)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from duotone_runtime.loading import (
    ModelLoadError,
    attention_backends,
    compute_dtype,
    load_pipeline,
    resolve_source,
)
from duotone_runtime.tiny import ensure_tiny_pipeline

pytestmark = pytest.mark.integration

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_tiny_pipeline(tmp_path_factory.mktemp("tiny"))


def test_builtin_tiny_builds_identically_every_time(tmp_path: Path, tiny_dir: Path) -> None:
    again = ensure_tiny_pipeline(tmp_path)
    for part in ("unet", "vae", "text_encoder"):
        (mine,) = (tiny_dir / part).glob("*.safetensors")
        (theirs,) = (again / part).glob("*.safetensors")
        assert mine.read_bytes() == theirs.read_bytes(), part
    assert ensure_tiny_pipeline(tmp_path) == again, "the cached copy is reused"


def test_builtin_source_loads_through_from_pretrained_with_sdpa(tmp_path: Path) -> None:
    resolved = resolve_source("builtin://tiny", pvc_root=tmp_path, cache_dir=tmp_path)
    assert (Path(resolved.location) / "model_index.json").is_file()
    pipeline = load_pipeline(resolved, dtype="float32", device="cpu")
    assert type(pipeline).__name__ == "StableDiffusionPipeline"
    assert attention_backends(pipeline) == {"AttnProcessor2_0"}
    image = pipeline("a cat", num_inference_steps=1, width=64, height=64, output_type="np")
    assert image.images.shape == (1, 64, 64, 3)


def test_file_source_loads_a_saved_directory(tmp_path: Path, tiny_dir: Path) -> None:
    target = tmp_path / "models" / "tiny"
    shutil.copytree(tiny_dir, target)
    resolved = resolve_source(f"file://{target}", pvc_root=tmp_path, cache_dir=tmp_path)
    assert resolved.location == str(target)
    pipeline = load_pipeline(resolved, dtype="bfloat16", device="cpu")
    assert str(pipeline.unet.dtype) == "torch.bfloat16"


@pytest.mark.parametrize(
    ("dtype", "device", "runs_in"),
    [
        ("bfloat16", "cuda:0", "bfloat16"),
        ("float16", "cuda:1", "float16"),
        ("float32", "cuda:0", "float32"),
        ("bfloat16", "cpu", "float32"),
        ("float16", "cpu", "float32"),
    ],
)
def test_the_spec_dtype_is_the_gpu_dtype_and_the_cpu_runs_float32(
    dtype: str, device: str, runs_in: str
) -> None:
    assert compute_dtype(dtype, device) == runs_in


def test_pvc_source_reads_below_the_claim_mount(tmp_path: Path, tiny_dir: Path) -> None:
    shutil.copytree(tiny_dir, tmp_path / "model-store" / "sd" / "tiny")
    resolved = resolve_source("pvc://model-store/sd/tiny", pvc_root=tmp_path, cache_dir=tmp_path)
    assert resolved.location == str(tmp_path / "model-store" / "sd" / "tiny")
    assert load_pipeline(resolved, dtype="float32", device="cpu") is not None


def test_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"model_index.json is missing.*mounted"):
        resolve_source("pvc://model-store/absent", pvc_root=tmp_path, cache_dir=tmp_path)


def hf_cache(root: Path, repo: str, tiny_dir: Path) -> Path:
    """A Hugging Face hub cache holding `repo` at `main`, as a download leaves it."""
    repo_dir = root / ("models--" + repo.replace("/", "--"))
    shutil.copytree(tiny_dir, repo_dir / "snapshots" / COMMIT)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(COMMIT)
    return root


LOAD_HF = """
import sys
from pathlib import Path
from duotone_runtime.loading import ModelLoadError, load_pipeline, resolve_source
resolved = resolve_source(sys.argv[1], pvc_root=Path("/"), cache_dir=Path("/"))
try:
    pipeline = load_pipeline(resolved, dtype="float32", device="cpu")
except ModelLoadError as error:
    print("ModelLoadError", error)
else:
    print("loaded", type(pipeline).__name__)
"""


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        pytest.param("hf://acme/tiny-sd", "loaded StableDiffusionPipeline", id="default ref"),
        pytest.param(
            "hf://acme/tiny-sd@main", "loaded StableDiffusionPipeline", id="named revision"
        ),
        pytest.param("hf://acme/not-pulled", "ModelLoadError", id="not pre-pulled: no download"),
    ],
)
def test_hf_source_is_served_from_the_pre_pulled_cache_offline(
    tmp_path: Path, tiny_dir: Path, source: str, expected: str
) -> None:
    cache = hf_cache(tmp_path / "hub", "acme/tiny-sd", tiny_dir)
    # huggingface_hub reads its cache location at import time, as in a pod: a fresh process.
    env = os.environ | {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "0"}
    out = subprocess.run(
        [sys.executable, "-c", LOAD_HF, source],
        check=True,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert out.stdout.strip().startswith(expected), out.stdout + out.stderr

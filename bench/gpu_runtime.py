"""GPU benchmark: architecturally real model sizes with random weights, naive vs served.

Builds random-weight pipelines with the real architectures (no download):
- sd-turbo: SD 2.1-class UNet (865M), OpenCLIP-H-class text encoder, SD VAE; 512x512, 1 and 4
  steps, no guidance.
- sdxl: SDXL-class UNet (2.6B), CLIP-L + bigG-class text encoders, SDXL VAE; 1024x1024,
  30 steps, classifier-free guidance 5.0.
For batch 1, 4, 8, 16 it reports images/s and p50 for: naive (direct pipeline calls, one image
at a time), direct batched calls, and the served runtime (real launcher + tritonserver, gRPC
clients at that concurrency), plus the share of the GPU's bf16 roofline. FLOPs per image are
counted with torch's FlopCounterMode on the real pipeline (SDPA included).

    python bench/gpu_runtime.py                       # on a CUDA machine, runtime package installed
    python bench/gpu_runtime.py --models sd-turbo --batches 1,8 --peak-tflops 989
    python bench/gpu_runtime.py --smoke               # tiny shapes on CPU: checks the code paths
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import tritonclient.grpc as grpcclient
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from torch.utils.flop_counter import FlopCounterMode
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
)

from duotone_runtime.tiny import MAX_TOKENS, byte_level_vocab
from duotone_testbed.clients import ImageRequest, generate_grpc
from duotone_testbed.local import LocalServer

H100_BF16_TFLOPS = 790.0
"""Measured dense bf16 rate of an H100 (docs/benchmarks.md anchors); override per GPU."""


@dataclass(frozen=True)
class Workload:
    name: str
    build: Callable[[bool], Any]
    width: int
    height: int
    steps: int
    guidance: float


def _tokenizer() -> Any:
    vocab, merges = byte_level_vocab()
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_TOKENS)


def _text_config(hidden: int, layers: int, heads: int, act: str, projection: int) -> Any:
    return CLIPTextConfig(
        vocab_size=49408,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=MAX_TOKENS,
        hidden_act=act,
        projection_dim=projection,
        bos_token_id=512,
        eos_token_id=513,
        pad_token_id=513,
    )


def _vae(scaling_factor: float, smoke: bool) -> Any:
    channels = (32, 64) if smoke else (128, 256, 512, 512)
    return AutoencoderKL(  # type: ignore[no-untyped-call]
        block_out_channels=channels,
        down_block_types=("DownEncoderBlock2D",) * len(channels),
        up_block_types=("UpDecoderBlock2D",) * len(channels),
        latent_channels=4,
        layers_per_block=1 if smoke else 2,
        norm_num_groups=32,
        scaling_factor=scaling_factor,
        force_upcast=False,
    )


def build_sd_turbo(smoke: bool) -> Any:
    """SD 2.1 / SD-Turbo shapes: UNet 320-640-1280-1280, cross-attention 1024, ViT-H text."""
    unet = UNet2DConditionModel(  # type: ignore[no-untyped-call]
        sample_size=64,
        block_out_channels=(32, 64) if smoke else (320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D")
        if smoke
        else ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")
        if smoke
        else ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        layers_per_block=1 if smoke else 2,
        cross_attention_dim=32 if smoke else 1024,
        attention_head_dim=(2, 4) if smoke else (5, 10, 20, 20),
        use_linear_projection=True,
    )
    text = CLIPTextModel(
        _text_config(32, 2, 4, "gelu", 32) if smoke else _text_config(1024, 23, 16, "gelu", 1024)
    )
    pipeline: Any = StableDiffusionPipeline(  # type: ignore[no-untyped-call]
        vae=_vae(0.18215, smoke),
        text_encoder=text,
        tokenizer=_tokenizer(),
        unet=unet,
        scheduler=EulerDiscreteScheduler(  # type: ignore[no-untyped-call]
            timestep_spacing="trailing", steps_offset=1
        ),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return pipeline


def build_sdxl(smoke: bool) -> Any:
    """SDXL base shapes: UNet 320-640-1280 with 1/2/10 transformer layers, CLIP-L + bigG."""
    unet = UNet2DConditionModel(  # type: ignore[no-untyped-call]
        sample_size=128,
        block_out_channels=(32, 64) if smoke else (320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D")
        if smoke
        else ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D")
        if smoke
        else ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1 if smoke else 2,
        transformer_layers_per_block=(1, 1) if smoke else (1, 2, 10),
        attention_head_dim=(2, 4) if smoke else (5, 10, 20),
        cross_attention_dim=64 if smoke else 2048,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8 if smoke else 256,
        projection_class_embeddings_input_dim=32 + 6 * 8 if smoke else 2816,
    )
    if smoke:
        text_1 = CLIPTextModel(_text_config(32, 2, 4, "quick_gelu", 32))
        text_2 = CLIPTextModelWithProjection(_text_config(32, 2, 4, "gelu", 32))
    else:
        text_1 = CLIPTextModel(_text_config(768, 12, 12, "quick_gelu", 768))
        text_2 = CLIPTextModelWithProjection(_text_config(1280, 32, 20, "gelu", 1280))
    pipeline: Any = StableDiffusionXLPipeline(  # type: ignore[no-untyped-call]
        vae=_vae(0.13025, smoke),
        text_encoder=text_1,
        text_encoder_2=text_2,
        tokenizer=_tokenizer(),
        tokenizer_2=_tokenizer(),
        unet=unet,
        scheduler=EulerDiscreteScheduler(steps_offset=1),  # type: ignore[no-untyped-call]
    )
    return pipeline


def workloads(smoke: bool, turbo_steps: list[int]) -> dict[str, list[Workload]]:
    size_turbo, size_xl = (64, 64) if smoke else (512, 1024)
    return {
        "sd-turbo": [
            Workload(f"sd-turbo {s} step(s)", build_sd_turbo, size_turbo, size_turbo, s, 0.0)
            for s in turbo_steps
        ],
        "sdxl": [
            Workload("sdxl 30 steps cfg 5", build_sdxl, size_xl, size_xl, 2 if smoke else 30, 5.0)
        ],
    }


def call(pipeline: Any, work: Workload, batch: int, seed: int = 0) -> None:
    generators = [torch.Generator("cpu").manual_seed(seed + i) for i in range(batch)]
    pipeline(
        prompt=[f"benchmark prompt {seed + i}" for i in range(batch)],
        num_inference_steps=work.steps,
        guidance_scale=work.guidance,
        width=work.width,
        height=work.height,
        generator=generators,
        output_type="np",
    )


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def flops_per_image(pipeline: Any, work: Workload) -> float:
    """FLOPs of one image at `work.steps`: f(1 step) + (steps - 1) x (f(2) - f(1))."""

    def counted(steps: int) -> float:
        one = Workload(work.name, work.build, work.width, work.height, steps, work.guidance)
        with FlopCounterMode(display=False) as counter:
            call(pipeline, one, 1)
        return float(counter.get_total_flops())

    first, second = counted(1), counted(2)
    return first + (work.steps - 1) * (second - first)


def time_direct(pipeline: Any, work: Workload, batch: int, calls: int, device: str) -> list[float]:
    latencies = []
    for i in range(calls):
        synchronize(device)
        started = time.perf_counter()
        call(pipeline, work, batch, seed=i * batch)
        synchronize(device)
        latencies.append(time.perf_counter() - started)
    return latencies


def time_served(
    server: LocalServer, work: Workload, concurrency: int, requests: int
) -> tuple[float, float]:
    """(images/s, p50 seconds) of `requests` sent by `concurrency` gRPC clients."""
    latencies: list[float] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    numbers = iter(range(requests))

    def worker() -> None:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        try:
            while (i := next(numbers, None)) is not None:
                request = ImageRequest(
                    f"benchmark prompt {i}",
                    negative_prompt="",
                    steps=work.steps,
                    guidance_scale=work.guidance,
                    width=work.width,
                    height=work.height,
                    seed=i,
                    num_images=1,
                )
                started = time.perf_counter()
                generate_grpc(client, request)
                with lock:
                    latencies.append(time.perf_counter() - started)
        except BaseException as error:
            errors.append(error)
        finally:
            client.close()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"served requests failed: {errors[0]!r}")
    return requests / wall, statistics.median(latencies)


def tier_document(work: Workload, source: str, device: str, max_batch: int) -> dict[str, Any]:
    return {
        "name": "efficient" if work.guidance == 0 else "flagship",
        "spec": {
            "model": {"source": source, "dtype": "bfloat16" if device == "cuda" else "float32"},
            "defaults": {
                "steps": work.steps,
                "guidanceScale": work.guidance,
                "width": work.width,
                "height": work.height,
            },
            "limits": {"maxSteps": 50, "maxWidth": 1536, "maxHeight": 1536},
            "batching": {
                "maxBatchSize": max_batch,
                "maxQueueDelayMs": 10,
                "maxQueueSize": 1024,
                "requestTimeoutMs": 3600000,
            },
            "resources": {"gpus": 1 if device == "cuda" else 0},
        },
    }


def bench_model(args: argparse.Namespace, builds: list[Workload], workdir: Path) -> None:
    device = "cpu" if args.smoke else "cuda"
    dtype = torch.float32 if args.smoke else torch.bfloat16
    batches = [int(b) for b in args.batches.split(",")]
    print(f"\n## building {builds[0].name.split()[0]} with random weights ...", flush=True)
    with torch.device(device):
        pipeline = builds[0].build(args.smoke)
    pipeline.to(device=device, dtype=dtype)
    pipeline.set_progress_bar_config(disable=True)
    params = sum(p.numel() for p in pipeline.unet.parameters()) / 1e9
    model_dir = workdir / builds[0].name.split()[0]
    pipeline.save_pretrained(model_dir)

    for work in builds:
        for _ in range(args.warmup):
            call(pipeline, work, 1)
        flops = flops_per_image(pipeline, work)
        roofline_s = flops / (args.peak_tflops * 1e12)
        print(
            f"\n### {work.name}, {work.width}x{work.height}, UNet {params:.2f}B params, "
            f"{flops / 1e12:.2f} TFLOP/image, roofline {1000 * roofline_s:.1f} ms/image "
            f"at {args.peak_tflops:.0f} TFLOP/s\n"
        )
        print("| mode | batch / concurrency | images/s | p50 ms | % of roofline | vs naive |")
        print("|---|---|---|---|---|---|")
        naive_lat = time_direct(pipeline, work, 1, args.calls * 2, device)
        naive = 1 / statistics.mean(naive_lat)

        def row(
            mode: str,
            batch: int,
            images_per_s: float,
            p50_s: float,
            *,
            flops: float = flops,
            naive: float = naive,
        ) -> None:
            share = 100 * images_per_s * flops / (args.peak_tflops * 1e12)
            print(
                f"| {mode} | {batch} | {images_per_s:.2f} | {1000 * p50_s:.0f} | "
                f"{share:.1f}% | {images_per_s / naive:.2f}x |",
                flush=True,
            )

        row("naive (direct, one at a time)", 1, naive, statistics.median(naive_lat))
        for batch in batches[1:] if batches[0] == 1 else batches:
            for _ in range(args.warmup):
                call(pipeline, work, batch)
            latencies = time_direct(pipeline, work, batch, args.calls, device)
            images_per_s = batch / statistics.mean(latencies)
            row("direct batched call", batch, images_per_s, statistics.median(latencies))

        server = LocalServer(
            workdir / f"server-{work.steps}",
            tier_document(work, f"file://{model_dir}", device, max(batches)),
            extra_args=(f"--device={device}",),
            cpu_threads=None,  # one server alone: the runtime sizes its pools from the machine
        )
        pipeline.to("cpu")  # leave the GPU to the server
        if device == "cuda":
            torch.cuda.empty_cache()
        server.start(deadline_s=1800)
        try:
            time_served(server, work, 1, args.warmup)
            for batch in batches:
                images_per_s, p50 = time_served(server, work, batch, max(2 * batch, args.calls))
                row("served (gate + Triton, gRPC)", batch, images_per_s, p50)
        finally:
            server.terminate()
        pipeline.to(device)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="sd-turbo,sdxl")
    parser.add_argument("--batches", default="1,4,8,16")
    parser.add_argument("--turbo-steps", default="1,4")
    parser.add_argument("--calls", type=int, default=8, help="timed calls per row")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--peak-tflops", type=float, default=H100_BF16_TFLOPS)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on CPU (no figures)")
    args = parser.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        # `make bench` runs every script; on a CPU machine this one has nothing to measure.
        print("gpu_runtime.py: no CUDA GPU here, nothing measured (--smoke checks it on CPU)")
        return 0
    if not args.smoke:
        print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    table = workloads(args.smoke, [int(s) for s in args.turbo_steps.split(",")])
    with tempfile.TemporaryDirectory(prefix="duotone-gpu-bench-") as tmp:
        for name in args.models.split(","):
            bench_model(args, table[name], Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())

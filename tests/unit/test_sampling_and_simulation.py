import torch

from services.common.tokens import estimate_tokens
from services.gpu_worker.engines.base import SamplingOptions
from services.gpu_worker.engines.sampling import make_generator, next_token
from services.gpu_worker.engines.simulated import step_seconds
from tests.stack import sim_model


def test_greedy_takes_the_argmax():
    logits = torch.tensor([0.1, 3.0, 0.2])
    assert next_token(logits, SamplingOptions(), None) == 1


def test_seeded_sampling_is_reproducible_and_top_k_1_is_greedy():
    logits = torch.randn(50, generator=torch.Generator().manual_seed(0))
    options = SamplingOptions(temperature=1.0, seed=42)
    a = [
        next_token(logits, options, g) for g in [make_generator(options, "cpu")] for _ in range(20)
    ]
    b = [
        next_token(logits, options, g) for g in [make_generator(options, "cpu")] for _ in range(20)
    ]
    assert a == b
    assert len(set(a)) > 1
    top1 = SamplingOptions(temperature=1.0, top_k=1, seed=1)
    assert next_token(logits, top1, make_generator(top1, "cpu")) == int(torch.argmax(logits))


def test_top_p_keeps_only_the_nucleus():
    logits = torch.log(torch.tensor([0.7, 0.2, 0.1]))
    options = SamplingOptions(temperature=1.0, top_p=0.5, seed=3)
    generator = make_generator(options, "cpu")
    assert {next_token(logits, options, generator) for _ in range(50)} == {0}


def test_simulated_step_time_grows_slowly_with_batch():
    profile = sim_model(step_ms=20.0).simulation.profile_for("")
    one, many = step_seconds(profile, 1), step_seconds(profile, 32)
    assert one == 0.020
    assert one < many < 32 * one  # batching raises total throughput
    assert estimate_tokens("abcd" * 10) == 10


def test_the_gpu_profile_follows_the_device_name():
    from services.common.config import read_toml
    from services.scheduler import config as scheduler_config

    spec = scheduler_config.load(read_toml("deploy/local/config.toml"), {}, {}).catalog[
        "llama-3-70b"
    ]
    h100 = spec.simulation.profile_for("NVIDIA H100 80GB HBM3")
    a100 = spec.simulation.profile_for("NVIDIA A100-SXM4-80GB")
    assert a100.decode_ms_per_step > h100.decode_ms_per_step
    assert spec.simulation.profile_for("AMD EPYC") == h100  # the configured gpu_type

"""The objective's conventions against the sampler's, the timestep distribution, the lr
schedule, the backend registry and the stage config's errors."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from infra.config import ConfigError
from model.sampler import FlowSchedule
from trainer.flow import TimestepConfig, interpolate, sample_times, shift_sigma
from trainer.registry import BackendSpec, backend_names, get_backend, register_backend
from trainer.trainer import lr_lambda


def test_one_sampler_step_with_the_training_target_lands_on_the_clean_latent():
    """Training: x_t = t x1 + (1 - t) x0, v = x1 - x0 with t the model time. The sampler feeds
    t = 1 - sigma and steps x += (sigma_next - sigma) * -pred; with pred = v from sigma to 0 it
    must reach x1 exactly: the signs of both sides agree."""
    gen = torch.Generator().manual_seed(0)
    clean, noise = torch.randn(3, 4, 4, generator=gen), torch.randn(3, 4, 4, generator=gen)
    schedule = FlowSchedule(shift=3.0)
    sigmas = schedule.sigmas(4, 16)
    t = schedule.model_times(sigmas)[1]  # a middle step
    sigma = sigmas[1]
    assert float(t) == pytest.approx(1 - float(sigma), abs=1e-6)
    x_t, v = interpolate(clean, noise, t)
    torch.testing.assert_close(x_t, sigma * noise + (1 - sigma) * clean)  # the sampler's x_sigma
    landed = x_t + (0.0 - sigma) * -v
    torch.testing.assert_close(landed, clean, atol=1e-5, rtol=0)


def test_logit_normal_times_and_the_resolution_shift():
    gen = torch.Generator().manual_seed(0)
    plain = TimestepConfig(shift="1", logit_mean=0.5, logit_std=1.0)
    t = sample_times([256] * 20000, plain, gen)
    sigma = 1 - t
    assert float(sigma.median()) == pytest.approx(1 / (1 + math.exp(-0.5)), abs=0.01)
    logit = torch.log(sigma / (1 - sigma))
    assert float(logit.std()) == pytest.approx(1.0, abs=0.03)
    dynamic = TimestepConfig()
    assert dynamic.shift_factor(256) == pytest.approx(math.exp(0.5))
    assert dynamic.shift_factor(4096) == pytest.approx(math.exp(1.15))
    small = sample_times([256] * 4000, dynamic, torch.Generator().manual_seed(1))
    large = sample_times([4096] * 4000, dynamic, torch.Generator().manual_seed(1))
    assert bool((large <= small + 1e-6).all())  # same draws, more noise for more tokens
    assert float(shift_sigma(torch.tensor(0.5), 3.0)) == pytest.approx(0.75)
    again = sample_times([256] * 5, plain, torch.Generator().manual_seed(7))
    assert torch.equal(again, sample_times([256] * 5, plain, torch.Generator().manual_seed(7)))


def test_lr_warmup_then_cosine_to_the_floor():
    values = [lr_lambda(s, 10, 110, "cosine", 0.1) for s in range(110)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert values[10] == pytest.approx(1.0) and values[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in itertools.pairwise(values[10:]))
    assert lr_lambda(500, 0, 110, "constant", 0.0) == 1.0


def test_backend_registry_refuses_duplicates_and_names_the_known_ones():
    assert "local" in backend_names()
    with pytest.raises(ValueError, match="already registered"):
        register_backend("local", BackendSpec(run=lambda c: {}))
    with pytest.raises(KeyError, match="registered: \\['local'"):
        get_backend("nope")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("[optim]\nlr = -1", "optim.lr: must be > 0, got -1.0"),
        ("backend = 'slurm'", "backend: must be one of"),
        ("[data]\ncaption_probs = {caption_x = 1.0}", "data.caption_probs"),
        ("[timesteps]\nshift = 'big'", "timesteps.shift"),
        ("[model]\npreset = 'huge'", "model.preset"),
    ],
)
def test_bad_stage_fields_fail_at_load_naming_file_and_key(tmp_path, line, message):
    from trainer.config import load_stage

    path = tmp_path / "stage.toml"
    path.write_text(
        f'name = "s"\nmanifest = "m.json"\nout = "o"\n{line}\n[encoders]\npipeline = "p"\n'
        if not line.startswith("[")
        else f'name = "s"\nmanifest = "m.json"\nout = "o"\n[encoders]\npipeline = "p"\n{line}\n'
    )
    with pytest.raises(ConfigError) as err:
        load_stage(path)
    assert str(path) in str(err.value) and message in str(err.value)

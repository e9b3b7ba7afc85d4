"""Tests of the conditional flow: bijection, log-determinant, prefix, normalization and files."""

import doctest
import importlib
import json
import math

import numpy as np
import pytest
import torch

from rsflow.flow import FlowConfig, NormalizationStats, PrefixFlow, bits_per_dim, describe_sizes

NAN = float("nan")


def tiny_config(kind: str = "affine", prior_dim: int = 8, **overrides) -> FlowConfig:
    values = dict(
        prior_dim=prior_dim, embedding_dim=5, num_slots=3, location_frequencies=3, image_context=8,
        image_hidden=16, slot_context=4, transforms=4, hidden_features=(16, 16), kind=kind, mixing="lu",
    )
    values.update(overrides)
    return FlowConfig(**values)


def perturbed_flow(config: FlowConfig, seed: int = 0) -> PrefixFlow:
    """Build a flow whose layers are far from the identity, with an LLM-like normalization.

    A perturbation of 0.1 moves whitened rows by about 1.5 on average and keeps |z| below
    about 10, like a trained flow. At 0.3 some rows map to |z| > 1e6, which no float32 flow
    inverts to 1e-4.
    """
    torch.manual_seed(seed)
    flow = PrefixFlow(config)
    with torch.no_grad():
        for parameter in flow.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    dim = config.prior_dim
    flow.set_normalization(torch.linspace(-0.01, 0.01, dim), torch.linspace(0.01, 0.03, dim))
    flow.set_embedding_normalization(torch.full((config.embedding_dim,), 0.5), torch.full((config.embedding_dim,), 2.0))
    return flow.eval()


def inputs(config: FlowConfig, batch: int = 7, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    embedding = torch.randn(batch, config.embedding_dim, generator=generator)
    lonlat = torch.stack(
        (torch.rand(batch, generator=generator) * 360 - 180, torch.rand(batch, generator=generator) * 180 - 90),
        dim=-1,
    ).double()
    lonlat[::3] = NAN
    slot = torch.arange(batch) % config.num_slots
    # Priors in the LLM's scale: about 0.02 around 0.
    prior_rows = 0.02 * torch.randn(batch, config.prior_dim, generator=generator)
    return prior_rows, embedding, lonlat, slot


@pytest.mark.parametrize("kind", ["affine", "spline"])
@pytest.mark.parametrize("mixing", ["lu", "permutation"])
def test_flow_inverts_to_1e4(kind, mixing):
    config = tiny_config(kind, mixing=mixing)
    flow = perturbed_flow(config)
    prior_rows, embedding, lonlat, slot = inputs(config)

    with torch.no_grad():
        z, _ = flow.to_base(prior_rows, embedding, lonlat, slot)
        restored = flow.from_base(z, embedding, lonlat, slot)

    assert z.dtype == torch.float32
    assert not torch.allclose(z, (prior_rows - flow.prior_mean) / flow.prior_std, atol=1e-2)
    assert (restored - prior_rows).abs().max() < 1e-4


@pytest.mark.parametrize("kind", ["affine", "spline"])
def test_base_inverts_to_1e4(kind):
    config = tiny_config(kind)
    flow = perturbed_flow(config)
    _, embedding, lonlat, slot = inputs(config)
    z = torch.randn(len(slot), config.prior_dim)

    with torch.no_grad():
        prior_rows = flow.from_base(z, embedding, lonlat, slot)
        restored, _ = flow.to_base(prior_rows, embedding, lonlat, slot)

    assert (restored - z).abs().max() < 1e-4


@pytest.mark.parametrize("kind", ["affine", "spline"])
def test_log_det_matches_autograd(kind):
    config = tiny_config(kind, prior_dim=6)
    flow = perturbed_flow(config).double()
    prior_rows, embedding, lonlat, slot = inputs(config, batch=3)
    prior_rows = prior_rows.double()

    _, log_det = flow.to_base(prior_rows, embedding, lonlat, slot)
    for row in range(3):
        def to_base_row(y, row=row):
            return flow.to_base(y[None], embedding[row : row + 1], lonlat[row : row + 1], slot[row : row + 1])[0][0]

        jacobian = torch.autograd.functional.jacobian(to_base_row, prior_rows[row])
        _, expected = torch.linalg.slogdet(jacobian)
        assert abs(float(log_det[row].detach()) - float(expected)) < 1e-6


def test_log_prob_is_change_of_variables():
    config = tiny_config()
    flow = perturbed_flow(config)
    prior_rows, embedding, lonlat, slot = inputs(config)

    with torch.no_grad():
        z, log_det = flow.to_base(prior_rows, embedding, lonlat, slot)
        log_prob = flow.log_prob(prior_rows, embedding, lonlat, slot)
    normal = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(dim=-1)

    assert torch.allclose(log_prob, normal + log_det, atol=1e-4)


def test_normalization_shifts_log_prob_by_log_std():
    config = tiny_config()
    flow = perturbed_flow(config)
    prior_rows, embedding, lonlat, slot = inputs(config)
    with torch.no_grad():
        before = flow.log_prob(prior_rows, embedding, lonlat, slot)

        # Scaling y and the normalization std by 10 scales the density by 10^-D.
        flow.set_normalization(flow.prior_mean * 10, flow.prior_std * 10)
        after = flow.log_prob(prior_rows * 10, embedding, lonlat, slot)

    assert torch.allclose(after, before - config.prior_dim * math.log(10), atol=1e-3)


def test_log_prob_prior_sums_slots():
    config = tiny_config()
    flow = perturbed_flow(config)
    _, embedding, lonlat, _ = inputs(config, batch=4)
    prior = 0.02 * torch.randn(4, config.num_slots, config.prior_dim)

    with torch.no_grad():
        total = flow.log_prob_prior(prior, embedding, lonlat)
        per_slot = [
            flow.log_prob(prior[:, k], embedding, lonlat, torch.full((4,), k)) for k in range(config.num_slots)
        ]

    assert total.shape == (4,)
    assert torch.allclose(total, torch.stack(per_slot).sum(dim=0), atol=1e-4)


def test_fresh_flow_prefix_is_mean():
    # Zero-initialized couplings and identity LU make the fresh flow map z = 0 to y = mean.
    config = tiny_config()
    flow = PrefixFlow(config)
    mean = torch.linspace(-0.5, 0.5, config.prior_dim)
    flow.set_normalization(mean, torch.full((config.prior_dim,), 0.02))
    _, embedding, lonlat, _ = inputs(config, batch=2)

    prefix = flow.prefix(embedding, lonlat)

    assert prefix.shape == (2, config.num_slots, config.prior_dim)
    assert torch.allclose(prefix, mean.expand_as(prefix), atol=1e-6)


def test_prefix_mode_matches_from_base():
    config = tiny_config("spline")
    flow = perturbed_flow(config)
    _, embedding, lonlat, _ = inputs(config, batch=2)

    prefix = flow.prefix(embedding, lonlat)
    with torch.no_grad():
        slot = torch.full((2,), 1)
        expected = flow.from_base(torch.zeros(2, config.prior_dim), embedding, lonlat, slot)

    assert torch.allclose(prefix[:, 1], expected, atol=1e-6)
    assert not prefix.requires_grad


def test_prefix_sample_mean_seeded():
    config = tiny_config()
    flow = perturbed_flow(config)
    _, embedding, lonlat, _ = inputs(config, batch=2)

    first = flow.prefix(embedding, lonlat, num_samples=4, generator=torch.Generator().manual_seed(3))
    second = flow.prefix(embedding, lonlat, num_samples=4, generator=torch.Generator().manual_seed(3))
    mode = flow.prefix(embedding, lonlat)

    assert torch.equal(first, second)
    assert not torch.allclose(first, mode)
    assert torch.isfinite(first).all()


def test_prefix_without_location_differs():
    config = tiny_config()
    flow = perturbed_flow(config)
    _, embedding, _, _ = inputs(config, batch=2)
    located = flow.prefix(embedding, torch.tensor([[8.55, 47.37], [8.55, 47.37]]))
    missing = flow.prefix(embedding, torch.full((2, 2), NAN))

    assert torch.isfinite(missing).all()
    assert not torch.allclose(located, missing)


def test_location_dropout_in_training_only():
    config = tiny_config(location_dropout=1.0)
    flow = perturbed_flow(config)
    prior_rows, embedding, lonlat, slot = inputs(config)
    missing = torch.full_like(lonlat, NAN)

    with torch.no_grad():
        evaluated = flow.eval().log_prob(prior_rows, embedding, lonlat, slot)
        without_location = flow.log_prob(prior_rows, embedding, missing, slot)
        trained = flow.train().log_prob(prior_rows, embedding, lonlat, slot)

    assert torch.allclose(trained, without_location)
    assert not torch.allclose(evaluated, without_location)


def test_score_priors_matches_log_prob_prior():
    config = tiny_config()
    flow = perturbed_flow(config)
    _, embedding, lonlat, _ = inputs(config, batch=3)
    priors = 0.02 * torch.randn(5, config.num_slots, config.prior_dim)

    scores = flow.score_priors(embedding, lonlat, priors)
    with torch.no_grad():
        column = flow.log_prob_prior(priors[2:3].expand(3, -1, -1), embedding, lonlat)

    assert scores.shape == (3, 5)
    assert torch.allclose(scores[:, 2], column, atol=1e-4)


def test_save_load_identical(tmp_path):
    config = tiny_config("spline")
    flow = perturbed_flow(config)
    prior_rows, embedding, lonlat, slot = inputs(config)

    flow.save(tmp_path / "flow", metadata={"encoder": "tiny-mae", "epoch": 3})
    loaded, metadata = PrefixFlow.load(tmp_path / "flow")

    assert metadata == {"encoder": "tiny-mae", "epoch": 3}
    assert loaded.config == config
    assert loaded.num_parameters() == flow.num_parameters()
    with torch.no_grad():
        assert torch.equal(
            loaded.log_prob(prior_rows, embedding, lonlat, slot), flow.log_prob(prior_rows, embedding, lonlat, slot)
        )
    assert torch.equal(loaded.prefix(embedding, lonlat), flow.prefix(embedding, lonlat))


def test_save_writes_config_json(tmp_path):
    flow = PrefixFlow(tiny_config())
    flow.save(tmp_path)
    document = json.loads((tmp_path / "flow.json").read_text())

    assert document["config"]["prior_dim"] == 8
    assert document["num_parameters"] == flow.num_parameters()
    assert (tmp_path / "flow.safetensors").is_file()
    assert not list(tmp_path.glob("*.tmp"))


def test_load_missing_folder_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="flow.json"):
        PrefixFlow.load(tmp_path / "nothing")


def test_load_other_format_version_raises(tmp_path):
    PrefixFlow(tiny_config()).save(tmp_path)
    document = json.loads((tmp_path / "flow.json").read_text())
    document["format_version"] = 99
    (tmp_path / "flow.json").write_text(json.dumps(document))

    with pytest.raises(ValueError, match="format_version"):
        PrefixFlow.load(tmp_path)


def test_normalization_stats_streaming():
    rng = np.random.default_rng(0)
    rows = rng.normal(loc=3.0, scale=0.02, size=(1000, 4)).astype(np.float32)
    stats = NormalizationStats(4)
    for chunk in np.split(rows, [7, 300, 301, 999]):
        stats.update(chunk)

    assert stats.count == 1000
    assert stats.mean.dtype == torch.float64
    assert np.allclose(stats.mean.numpy(), rows.astype(np.float64).mean(axis=0), rtol=0, atol=1e-12)
    assert np.allclose(stats.std().numpy(), rows.astype(np.float64).std(axis=0), rtol=1e-9)


def test_normalization_stats_floor_and_errors():
    stats = NormalizationStats(2)
    with pytest.raises(ValueError, match="no rows"):
        stats.std()
    stats.update(np.ones((5, 2)))
    assert torch.all(stats.std(min_std=1e-3) == 1e-3)
    with pytest.raises(ValueError, match="NaN"):
        stats.update(np.array([[1.0, NAN]]))
    with pytest.raises(ValueError, match="shape"):
        stats.update(np.ones((5, 3)))


def test_set_normalization_rejects_bad_std():
    flow = PrefixFlow(tiny_config())
    with pytest.raises(ValueError, match="positive"):
        flow.set_normalization(torch.zeros(8), torch.zeros(8))
    with pytest.raises(ValueError, match="shape"):
        flow.set_normalization(torch.zeros(7), torch.ones(7))


def test_bits_per_dim_value():
    assert math.isclose(bits_per_dim(-math.log(2) * 10, 10), 1.0)
    assert torch.allclose(bits_per_dim(torch.tensor([-8 * math.log(2)]), 4), torch.tensor([2.0]))


def test_input_shapes_checked():
    config = tiny_config()
    flow = PrefixFlow(config)
    prior_rows, embedding, lonlat, slot = inputs(config)

    with pytest.raises(ValueError, match="embedding"):
        flow.log_prob(prior_rows, embedding[:, :3], lonlat, slot)
    with pytest.raises(ValueError, match="slot"):
        flow.log_prob(prior_rows, embedding, lonlat, slot + config.num_slots)
    with pytest.raises(ValueError, match="prior"):
        flow.log_prob_prior(prior_rows, embedding, lonlat)


def test_config_for_dims_scales():
    small = FlowConfig.for_dims(prior_dim=64, embedding_dim=32, num_slots=4)
    large = FlowConfig.for_dims(prior_dim=4096, embedding_dim=1024)

    assert (small.kind, small.mixing, small.hidden_features) == ("spline", "lu", (64, 64))
    assert (large.kind, large.mixing, large.hidden_features) == ("affine", "permutation", (1024, 1024))
    assert large.image_context == 512
    assert large.num_slots == 8
    assert FlowConfig.for_dims(64, 32, transforms=2).transforms == 2


def test_config_rejects_invalid():
    with pytest.raises(ValueError, match="kind"):
        tiny_config(kind="glow")
    with pytest.raises(ValueError, match="prior_dim"):
        tiny_config(prior_dim=1)
    with pytest.raises(ValueError, match="location_dropout"):
        tiny_config(location_dropout=1.5)


def test_describe_sizes_counts_parameters():
    rows = describe_sizes(prior_dim=16, embedding_dims=[8, 12], num_slots=2)

    assert [row["embedding_dim"] for row in rows] == [8, 12]
    assert rows[0]["num_parameters"] == PrefixFlow(FlowConfig.for_dims(16, 8, 2)).num_parameters()
    assert rows[1]["num_parameters"] > rows[0]["num_parameters"]


@pytest.mark.parametrize("module_name", ["rsflow.flow", "rsflow.location", "rsflow.baselines"])
def test_docstring_examples_run(module_name):
    module = importlib.import_module(module_name)
    outcome = doctest.testmod(module, optionflags=doctest.ELLIPSIS)

    assert outcome.attempted > 0
    assert outcome.failed == 0

"""Tests of the fixed location encoding e(g)."""

import math

import pytest
import torch

from rsflow.location import (
    DEFAULT_FREQUENCIES,
    LocationEncoding,
    encode_location,
    location_features,
    wavelengths_km,
)

NAN = float("nan")


def test_feature_count_default():
    assert location_features() == 3 + 6 * DEFAULT_FREQUENCIES + 1
    assert location_features(DEFAULT_FREQUENCIES) == 76
    assert LocationEncoding().num_features == 76


def test_encoding_shape_and_dtype():
    lonlat = torch.tensor([[8.55, 47.37], [-74.0, 40.7], [151.2, -33.9]], dtype=torch.float64)
    features = encode_location(lonlat, num_frequencies=5)

    assert features.shape == (3, location_features(5))
    assert features.dtype == torch.float32
    assert torch.isfinite(features).all()


def test_position_is_unit_vector():
    lonlat = torch.tensor([[0.0, 0.0], [90.0, 0.0], [0.0, 90.0], [-120.0, -45.0]])
    position = encode_location(lonlat, num_frequencies=3)[:, :3]

    assert torch.allclose(position.norm(dim=1), torch.ones(4), atol=1e-6)
    assert torch.allclose(position[0], torch.tensor([1.0, 0.0, 0.0]), atol=1e-6)
    assert torch.allclose(position[1], torch.tensor([0.0, 1.0, 0.0]), atol=1e-6)
    assert torch.allclose(position[2], torch.tensor([0.0, 0.0, 1.0]), atol=1e-6)


def test_known_location_indicator_zero():
    features = encode_location(torch.tensor([[8.55, 47.37]]))

    assert features[0, -1] == 0.0


def test_missing_location_zeros_and_indicator():
    lonlat = torch.tensor([[NAN, NAN], [8.55, NAN], [NAN, 47.37], [8.55, 47.37]])
    features = encode_location(lonlat)

    for row in range(3):
        assert torch.all(features[row, :-1] == 0.0)
        assert features[row, -1] == 1.0
    assert features[3, -1] == 0.0
    assert features[3, :-1].abs().sum() > 0


def test_antimeridian_continuous():
    features = encode_location(torch.tensor([[179.9999, 10.0], [-179.9999, 10.0]], dtype=torch.float64))

    assert torch.allclose(features[0], features[1], atol=1e-2)


def test_pole_ignores_longitude():
    features = encode_location(torch.tensor([[0.0, 90.0], [120.0, 90.0], [-75.0, 90.0]], dtype=torch.float64))

    assert torch.allclose(features[0], features[1], atol=1e-4)
    assert torch.allclose(features[0], features[2], atol=1e-4)


def test_near_places_closer_than_far():
    lonlat = torch.tensor([[8.55, 47.37], [8.56, 47.37], [9.55, 47.37], [-74.0, 40.7]], dtype=torch.float64)
    features = encode_location(lonlat)
    distance = [float((features[0] - features[i]).norm()) for i in (1, 2, 3)]

    # About 0.75 km, 75 km and 6,300 km apart.
    assert distance[0] < distance[1]
    assert distance[0] < distance[2]


def test_fine_scale_separates_kilometres():
    # Two places 1 km apart differ at the 20 km wavelength by a visible amount.
    lonlat = torch.tensor([[8.55, 47.37], [8.55, 47.37 + 1 / 111.2]], dtype=torch.float64)
    features = encode_location(lonlat)

    assert (features[0] - features[1]).abs().max() > 0.05


def test_wavelengths_span_globe_to_km():
    wavelengths = wavelengths_km()

    assert len(wavelengths) == DEFAULT_FREQUENCIES
    assert math.isclose(wavelengths[0], 40030, rel_tol=1e-3)
    assert 19 < wavelengths[-1] < 21


def test_latitude_out_of_range_rejected():
    with pytest.raises(ValueError, match="latitude"):
        encode_location(torch.tensor([[47.37, 95.0]]))


def test_infinite_value_rejected():
    with pytest.raises(ValueError, match="infinite"):
        encode_location(torch.tensor([[float("inf"), 10.0]]))


def test_wrong_shape_rejected():
    with pytest.raises(ValueError, match="shape"):
        encode_location(torch.zeros(3, 3))


def test_negative_frequencies_rejected():
    with pytest.raises(ValueError, match="num_frequencies"):
        location_features(-1)


def test_module_matches_function():
    lonlat = torch.tensor([[8.55, 47.37], [NAN, NAN]])
    encoding = LocationEncoding(num_frequencies=4)

    assert torch.equal(encoding(lonlat), encode_location(lonlat, 4))
    assert list(encoding.parameters()) == []

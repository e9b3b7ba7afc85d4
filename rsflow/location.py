"""Location encoding e(g): fixed multi-scale sinusoidal features of a place on the Earth.

A (lon, lat) pair in degrees becomes the 3-D unit vector p = (cos lat cos lon,
cos lat sin lon, sin lat), so that the encoding is continuous across the antimeridian and
at the poles. The features are p itself, then sin(2^l p) and cos(2^l p) for each of the
L frequencies l = 0 .. L-1 (applied to each of the three coordinates), then one "missing"
indicator:

    e(g) = [p, sin(2^0 p), ..., sin(2^(L-1) p), cos(2^0 p), ..., cos(2^(L-1) p), 0]
    e(missing) = [0, ..., 0, 1]

so there are 3 + 6 L + 1 features (76 at the default L = 12). On the unit sphere the
frequency 2^l has a wavelength of 2 pi / 2^l radians, that is about 40,030 km at l = 0 and
about 20 km at l = 11 on a sphere of radius 6371 km. Nothing is learned here. The network
that reads e(g) learns which scales matter.

The idea of encoding coordinates with fixed functions at several scales before a learned
network follows the location encoders of SatCLIP (spherical harmonics,
https://arxiv.org/abs/2311.17179) and GeoCLIP (random Fourier features at several scales,
https://arxiv.org/abs/2309.16020). This module uses plain sinusoids of the unit vector
instead, which need no basis tables and no random projection to store.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

DEFAULT_FREQUENCIES = 12
"""Default number of frequencies L. The shortest wavelength is then about 20 km."""

EARTH_RADIUS_KM = 6371.0088
"""Mean Earth radius (IUGG), used only to report wavelengths in kilometres."""


def location_features(num_frequencies: int = DEFAULT_FREQUENCIES) -> int:
    """Return the number of features of `encode_location`: 3 + 6 L + 1."""
    if num_frequencies < 0:
        raise ValueError(f"num_frequencies must be 0 or more, got {num_frequencies}")
    return 3 + 6 * num_frequencies + 1


def wavelengths_km(num_frequencies: int = DEFAULT_FREQUENCIES) -> list[float]:
    """Return the great-circle wavelength in km of each frequency 2^l, for documentation and logs."""
    return [2 * math.pi * EARTH_RADIUS_KM / 2**level for level in range(num_frequencies)]


def encode_location(lonlat: Tensor, num_frequencies: int = DEFAULT_FREQUENCIES) -> Tensor:
    """Encode (lon, lat) in degrees, shape [B, 2], into features of shape [B, 3 + 6 L + 1].

    A row with NaN in lon or lat is a missing location. It encodes to zeros with the last
    (indicator) feature set to 1. The computation runs in float64 because 2^l times a
    float32 coordinate loses the fine scales. The result is float32 on the input's device.

    Raises ValueError for a wrong shape, a latitude outside [-90, 90] or an infinite value.
    Longitudes of any finite value are accepted, because they wrap around the sphere.
    """
    if lonlat.ndim != 2 or lonlat.shape[-1] != 2:
        raise ValueError(f"lonlat must have shape [B, 2] (lon, lat in degrees), got {tuple(lonlat.shape)}")
    if num_frequencies < 0:
        raise ValueError(f"num_frequencies must be 0 or more, got {num_frequencies}")

    # Validate the known locations and keep the missing ones aside.
    coordinates = lonlat.to(torch.float64)
    missing = torch.isnan(coordinates).any(dim=-1)
    known = coordinates[~missing]
    if torch.isinf(known).any():
        raise ValueError("lonlat contains an infinite value; use NaN for a missing location")
    latitude_out_of_range = known[:, 1].abs() > 90
    if latitude_out_of_range.any():
        bad = known[latitude_out_of_range][0].tolist()
        raise ValueError(
            f"latitude must lie in [-90, 90] degrees, got (lon, lat) = {bad}; "
            "check that the columns are (lon, lat) and not (lat, lon)"
        )

    # The unit-sphere position, with missing rows set to zero so they produce finite features.
    lon = torch.deg2rad(torch.where(missing, 0.0, coordinates[:, 0]))
    lat = torch.deg2rad(torch.where(missing, 0.0, coordinates[:, 1]))
    position = torch.stack(
        (torch.cos(lat) * torch.cos(lon), torch.cos(lat) * torch.sin(lon), torch.sin(lat)),
        dim=-1,
    )

    # Multi-scale sinusoids: [B, L, 3] flattened to [B, 3 L] for sin and for cos.
    frequencies = 2.0 ** torch.arange(num_frequencies, dtype=torch.float64, device=lonlat.device)
    angles = (position[:, None, :] * frequencies[:, None]).flatten(1)
    features = torch.cat(
        (position, torch.sin(angles), torch.cos(angles), torch.zeros_like(position[:, :1])),
        dim=-1,
    )

    # A missing location gets all zeros and the indicator.
    features[missing] = 0.0
    features[missing, -1] = 1.0
    return features.to(torch.float32)


class LocationEncoding(torch.nn.Module):
    """The fixed location encoding e(g) as a module without parameters.

    Arguments:
        num_frequencies: The number L of frequencies 2^0 .. 2^(L-1).

    Example:
        >>> encoding = LocationEncoding(num_frequencies=4)
        >>> encoding.num_features
        28
        >>> encoding(torch.tensor([[8.55, 47.37], [float("nan"), float("nan")]])).shape
        torch.Size([2, 28])
    """

    def __init__(self, num_frequencies: int = DEFAULT_FREQUENCIES) -> None:
        super().__init__()
        self.num_frequencies = num_frequencies
        self.num_features = location_features(num_frequencies)

    def forward(self, lonlat: Tensor) -> Tensor:
        """Encode (lon, lat) in degrees, shape [B, 2], NaN where missing."""
        return encode_location(lonlat, self.num_frequencies)

    def extra_repr(self) -> str:
        return f"num_frequencies={self.num_frequencies}, num_features={self.num_features}"

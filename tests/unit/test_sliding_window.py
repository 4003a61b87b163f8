"""Our sliding window gives MONAI's logits: windows, padding, Gaussian/constant blending.

MONAI is a test-only dependency; the network is a randomly initialised MONAI 3D U-Net.
"""

from __future__ import annotations

import pytest
import torch
from monai.data.utils import compute_importance_map
from monai.inferers.utils import sliding_window_inference

from inference.sliding_window import (
    Blend,
    WindowStats,
    importance_map,
    sliding_window,
    window_starts,
)
from tests.support.models import random_unet

CASES = [
    # shape (z, y, x), roi, overlap, blend, batch size
    ((50, 61, 37), (32, 32, 32), 0.25, "gaussian", 3),
    ((20, 70, 40), (32, 32, 32), 0.5, "constant", 1),
    ((64, 64, 64), (32, 48, 32), 0.6, "gaussian", 4),
    ((33, 32, 40), (32, 32, 32), 0.0, "gaussian", 2),
]


@pytest.mark.parametrize(("shape", "roi", "overlap", "blend", "batch"), CASES)
def test_logits_match_monai_sliding_window_inference_within_1e_4(
    shape: tuple[int, int, int],
    roi: tuple[int, int, int],
    overlap: float,
    blend: Blend,
    batch: int,
) -> None:
    network = random_unet(out_channels=3)
    image = torch.randn(1, 1, *shape, generator=torch.Generator().manual_seed(1))

    with torch.inference_mode():
        expected = sliding_window_inference(image, roi, batch, network, overlap=overlap, mode=blend)
        ours = sliding_window(
            image, network, roi_size=roi, overlap=overlap, blend=blend, batch_size=batch
        )

    assert isinstance(expected, torch.Tensor)
    assert ours.shape == expected.shape == (1, 3, *shape)
    assert float((ours - expected).abs().max()) <= 1e-4


def test_importance_maps_are_monais() -> None:
    for blend in ("gaussian", "constant"):
        ours = importance_map(
            (24, 32, 16), blend=blend, sigma_scale=0.125, device=torch.device("cpu")
        )
        theirs = compute_importance_map((24, 32, 16), mode=blend, sigma_scale=0.125)
        assert torch.equal(ours, theirs)


def test_windows_cover_the_volume_and_end_flush_with_its_far_edge() -> None:
    starts = window_starts((100, 32, 40), (32, 32, 32), 0.25)

    assert starts[0] == [0, 24, 48, 68]
    assert starts[1] == [0]
    assert starts[2] == [0, 8]


def test_windows_are_batched_and_counted() -> None:
    calls: list[int] = []

    def network(batch: torch.Tensor) -> torch.Tensor:
        calls.append(batch.shape[0])
        return batch.repeat(1, 2, 1, 1, 1)

    stats = WindowStats()
    image = torch.rand(1, 1, 40, 40, 40)
    out = sliding_window(
        image, network, roi_size=(24, 24, 24), overlap=0.5, batch_size=5, stats=stats
    )

    # An identity network gives the image back, whatever the blending.
    assert torch.allclose(out[:, :1], image, atol=1e-6)
    assert stats.windows == 27 and calls == [5, 5, 5, 5, 5, 2]
    assert stats.batches == 6


def test_two_dimensional_windows_work_like_three_dimensional_ones() -> None:
    conv = torch.nn.Conv2d(1, 2, 3, padding=1).eval()
    image = torch.randn(1, 1, 70, 50)

    with torch.inference_mode():
        expected = sliding_window_inference(image, (32, 32), 3, conv, overlap=0.25, mode="gaussian")
        ours = sliding_window(image, conv, roi_size=(32, 32), overlap=0.25, batch_size=3)

    assert isinstance(expected, torch.Tensor)
    assert float((ours - expected).abs().max()) <= 1e-5


def test_inputs_that_do_not_fit_are_refused() -> None:
    with pytest.raises(ValueError, match="spatial axes"):
        sliding_window(torch.zeros(2, 1, 8, 8, 8), torch.nn.Identity(), roi_size=(4, 4, 4))

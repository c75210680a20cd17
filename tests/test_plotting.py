"""The shared Agg plotting helpers: figures without pyplot, pixels as imshow arrays."""

import numpy as np
import torch

from unigame.plotting import agg_figure, to_image


def test_agg_figure_gives_a_grid_of_axes_that_saves_a_png(tmp_path):
    fig, axes = agg_figure(2, 3, (4.0, 2.0), layout="constrained")
    assert axes.shape == (2, 3)
    assert tuple(fig.get_size_inches()) == (4.0, 2.0)
    axes[1, 2].plot([0, 1], [1, 0])
    path = tmp_path / "f.png"
    fig.savefig(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_agg_figure_keeps_a_single_axis_in_a_2d_array():
    _, axes = agg_figure()
    assert axes.shape == (1, 1)


def test_to_image_is_channels_last_and_clamped_to_unit_range():
    pixels = torch.tensor([[[-0.5, 0.25]], [[1.5, 0.5]], [[0.0, 1.0]]], dtype=torch.bfloat16)  # (3, 1, 2)
    image = to_image(pixels)
    assert image.shape == (1, 2, 3) and image.dtype == np.float32
    np.testing.assert_allclose(image[0, 0], [0.0, 1.0, 0.0])
    np.testing.assert_allclose(image[0, 1], [0.25, 0.5, 1.0])

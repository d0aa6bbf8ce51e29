"""The colours and the one order of kinds the figures use (the figures themselves: test_report.py)."""

from __future__ import annotations

import itertools

import numpy as np

from synthact.analysis import figures, order
from synthact.spec import KINDS

# Machado, Oliveira & Fernandes (2009): dichromacy (severity 1) as a matrix on linear sRGB.
DICHROMACY = {
    "protanopia": [[0.152286, 1.052583, -0.204868], [0.114503, 0.786281, 0.099216], [-0.003882, -0.048116, 1.051998]],
    "deuteranopia": [[0.367322, 0.860646, -0.227968], [0.280085, 0.672501, 0.047413], [-0.011820, 0.042940, 0.968881]],
    "tritanopia": [[1.255528, -0.076749, -0.178779], [-0.078411, 0.930809, 0.147602], [0.004733, 0.691367, 0.303900]],
}
SRGB_TO_XYZ = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
WHITE = np.array([0.95047, 1.0, 1.08883])


def linear(colour: str) -> np.ndarray:
    rgb = np.array([int(colour[i:i + 2], 16) / 255 for i in (1, 3, 5)])
    return np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)


def lab(rgb_linear: np.ndarray) -> np.ndarray:
    t = SRGB_TO_XYZ @ np.clip(rgb_linear, 0, 1) / WHITE
    f = np.where(t > (6 / 29) ** 3, np.cbrt(t), t / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def test_the_palette_has_12_colours_apart_in_normal_and_colour_blind_vision():
    colours = [*figures.PALETTE, "#000000"]  # and each apart from real's black
    assert len(figures.PALETTE) >= 12
    for vision, matrix in {"normal": np.eye(3), **DICHROMACY}.items():
        seen = [lab(np.asarray(matrix) @ linear(c)) for c in colours]
        closest = min(np.linalg.norm(a - b) for a, b in itertools.combinations(seen, 2))
        assert closest > 15, vision  # CIELAB distance: about 2 is just noticeable, 15 plainly different
    assert all(lab(linear(c))[0] < 82 for c in figures.PALETTE)  # dark enough for lines on white


def test_every_kind_has_its_own_colour_and_real_is_black():
    colours = {kind: figures.kind_color(kind) for kind in KINDS}
    assert colours["real"] == "black"
    assert len(set(colours.values())) == len(KINDS)
    assert figures.kind_color("a_kind_added_later") in figures.PALETTE


def test_one_kind_order_the_papers_kinds_then_the_ladder_then_the_controls():
    assert set(order.KIND_ORDER) == set(KINDS)
    ranked = sorted(KINDS, key=order.kind_rank)
    assert ranked[:5] == ["real", "sae_recon", "gaussian", "synthetic_baseline", "synthetic_structured"]
    assert ranked[-2:] == ["control_swapped", "control_other_latents"]
    assert order.kind_rank("zzz") > order.kind_rank("control_other_latents")
    rungs = [{"target_kind": "synthetic_cooccur", "cooccur": "counts", "geometry_temp": t, "value_source": v}
             for t, v in ((0.01, "quantile"), (0.0, "template"), (0.01, "template"))]
    assert [order.variant_rank(r, "target_kind")[2] for r in sorted(rungs, key=lambda r: order.variant_rank(
        r, "target_kind"))] == [3, 4, 5]  # R3, R4, R5: their places in rungs.RUNGS
    directions = ["isotropic", "latent:0", "toward:gaussian", "toward:same", "toward:real"]
    assert sorted(directions, key=order.direction_rank) == ["toward:real", "toward:gaussian", "toward:same",
                                                            "isotropic", "latent:0"]
    assert sorted([("step", "plateaus"), ("interpolate", "sensitivity")], key=lambda s: order.scan_rank(*s))[0][1] \
        == "sensitivity"

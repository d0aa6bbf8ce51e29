"""Directions on the toy backend: unit norm, targets, sphere uniformity, latents, determinism, provenance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synthact.errors import SynthactError
from synthact.generation.context import GenerationSettings
from synthact.generation.directions import direction_from_provenance, make_directions
from synthact.generation.kinds import draw, from_provenance
from tests.helpers import toy_context

SETTINGS = GenerationSettings(candidates=4)
DIRECTIONS = [
    ("toward:real", "real"),
    ("toward:gaussian", "gaussian"),
    ("toward:synthetic_structured", "synthetic_structured"),
    ("toward:same", "real"),
    ("toward_recon", None),
    ("isotropic", None),
    ("latent:3", None),
    ("latent:random", None),
]


def rngs(seeds) -> list[np.random.Generator]:
    return [np.random.default_rng(s) for s in seeds]


@pytest.fixture(scope="module")
def ctx():
    return toy_context()


@pytest.fixture(scope="module")
def base(ctx):
    return draw("real", rngs(range(6)), ctx)


@pytest.mark.parametrize(("direction", "target_kind"), DIRECTIONS)
def test_directions_are_unit_vectors_and_rebuild_from_provenance(ctx, base, direction, target_kind):
    seeds = [100 + i for i in range(len(base))]
    dirs = make_directions(direction, target_kind, base, rngs(seeds), ctx, SETTINGS)
    torch.testing.assert_close(dirs.vectors.norm(dim=-1), torch.ones(len(base)))
    for b, seed in enumerate(seeds):
        target = None
        if dirs.target is not None and direction.startswith("toward:"):
            t = dirs.target
            target = from_provenance(
                t.kind, t.tokens[b], t.latents[b] if t.latents else None, t.values[b] if t.values else None,
                False, ctx, seed=seed,
            )
        latent = int(dirs.latent[b]) if dirs.latent is not None else None
        rebuilt = direction_from_provenance(direction, base.vectors[b], ctx, target, seed, latent)
        assert float((rebuilt - dirs.vectors[b]).norm()) <= 1e-5, (direction, b)


@pytest.mark.parametrize(("direction", "target_kind"), [d for d in DIRECTIONS if d[0].startswith("toward")])
def test_toward_points_from_base_to_target(ctx, base, direction, target_kind):
    dirs = make_directions(direction, target_kind, base, rngs(range(50, 56)), ctx, SETTINGS)
    diff = dirs.target.vectors.double() - base.vectors.double()
    np.testing.assert_allclose(dirs.distance, diff.norm(dim=-1).numpy(), rtol=1e-6)
    np.testing.assert_allclose(dirs.target_norm, dirs.target.vectors.double().norm(dim=-1).numpy(), rtol=1e-6)
    torch.testing.assert_close(dirs.vectors, (diff / diff.norm(dim=-1, keepdim=True)).float())
    assert (dirs.distance > 1e-3).all() and dirs.latent is None
    if direction == "toward_recon":
        with torch.no_grad():
            recon = ctx.sae.decode(ctx.sae.encode(base.vectors))
        torch.testing.assert_close(dirs.target.vectors, recon)
        assert np.array_equal(dirs.target.tokens, base.tokens)
    else:
        assert dirs.target.kind == (target_kind or base.kind)


def test_a_target_on_top_of_its_base_is_redrawn(ctx, base):
    # The same seeds draw the same prompts, so the first targets equal their bases.
    dirs = make_directions("toward:real", "real", base, rngs(range(6)), ctx, None)
    assert (dirs.distance > 1e-3).all()
    first = draw("real", rngs(range(6)), ctx)
    torch.testing.assert_close(first.vectors, base.vectors)


def test_isotropic_directions_are_uniform_on_the_sphere(ctx):
    n, d = 3000, ctx.stats.mean.shape[0]
    many = draw("gaussian", rngs(range(n)), ctx)
    dirs = make_directions("isotropic", None, many, rngs(range(n, 2 * n)), ctx, None).vectors.double()
    # Uniform on the sphere: E[D] = 0 and E[D D^T] = I / d.
    assert float(dirs.mean(0).norm()) < 3 / np.sqrt(n)
    second = dirs.T @ dirs / n
    assert float((second - torch.eye(d, dtype=torch.float64) / d).norm()) < 3 * np.sqrt(1 / n)


def test_latent_directions(ctx, base):
    w = ctx.sae.W_dec.detach()
    dirs = make_directions("latent:3", None, base, rngs(range(6)), ctx, None)
    torch.testing.assert_close(dirs.vectors, (w[3] / w[3].norm()).expand(6, -1))
    assert (dirs.latent == 3).all()
    random = make_directions("latent:random", None, base, rngs(range(6)), ctx, None)
    assert (ctx.stats.freq.numpy()[random.latent] > 0).all()
    torch.testing.assert_close(random.vectors, w[random.latent] / w[random.latent].norm(dim=-1, keepdim=True))
    with pytest.raises(SynthactError, match="latents"):
        make_directions(f"latent:{w.shape[0]}", None, base, rngs(range(6)), ctx, None)


@pytest.mark.parametrize("direction", ["toward:real", "toward:synthetic_baseline", "isotropic", "latent:random"])
def test_a_direction_depends_only_on_its_own_rng(ctx, direction):
    seeds = [7, 8, 9]
    bases = draw("real", rngs(seeds), ctx)
    middle = draw("real", rngs([8]), ctx)
    batch = make_directions(direction, None, bases, rngs([70, 80, 90]), ctx, SETTINGS)
    alone = make_directions(direction, None, middle, rngs([80]), ctx, SETTINGS)
    torch.testing.assert_close(batch.vectors[1:2], alone.vectors, rtol=1e-5, atol=1e-5)


def test_bad_directions_are_refused(ctx, base):
    with pytest.raises(SynthactError, match="unknown direction"):
        make_directions("sideways", None, base, rngs(range(6)), ctx, None)
    with pytest.raises(SynthactError, match="one per base"):
        make_directions("isotropic", None, base, rngs(range(2)), ctx, None)
    with pytest.raises(SynthactError, match="target_seed"):
        direction_from_provenance("isotropic", base.vectors[0], ctx)


@pytest.mark.parametrize("kind", ["synthetic_baseline", "synthetic_structured", "random_latents"])
def test_paired_targets_are_built_from_the_base_code(ctx, base, kind):
    seeds = [300 + i for i in range(len(base))]
    dirs = make_directions(f"toward:{kind}", kind, base, rngs(seeds), ctx, SETTINGS, paired=True)
    t = dirs.target
    assert np.array_equal(t.tokens, base.tokens) and np.array_equal(t.l0, base.l0)
    with torch.no_grad():
        z = ctx.sae.encode(base.vectors)
    for b in range(len(base)):
        ids = torch.nonzero(z[b]).flatten()
        assert np.array_equal(t.template_latents[b], ids.numpy())
        np.testing.assert_allclose(t.values[b], z[b, ids].numpy(), rtol=1e-6)
        rebuilt = from_provenance(kind, t.tokens[b], t.latents[b], t.values[b], False, ctx)
        torch.testing.assert_close(rebuilt, t.vectors[b], rtol=1e-5, atol=1e-5)
    unpaired = make_directions(f"toward:{kind}", kind, base, rngs(seeds), ctx, SETTINGS)
    assert not np.array_equal(unpaired.target.tokens, base.tokens)

"""How often the authors' frequency-matched baseline loop, as written, differs from what it evidently intends.

Their `synthetic_perturbation_bag_of_features` (teren, branch explorations) sorts all latents by |f_j - f_i|,
filters `f_id != feat_id and f_id not in selected_features`, picks `random.choice` among the first 10, and
edits the code in place (`acts[i] = 0; acts[j] = value`). `selected_features` is a set of 0-d tensors, which
compares by identity, so the second filter removes nothing: a latent can be chosen twice. In-place edits lose
a latent whenever a choice lands on a latent already written or on a template latent not yet visited
(whose value then moves on). This measures, on real codes, how often each happens:

    python -m synthact.bench.authors_loops            # the toy SAE of jobs/paper-toy.yaml
    python -m synthact.bench.authors_loops --d-sae 24576  # a GPT-2-small-sized random SAE (bench.fixtures)
"""

from __future__ import annotations

import argparse
import random

import torch

K = 10  # the authors' top_k


def as_written(code: torch.Tensor, freq: torch.Tensor, rng: random.Random) -> tuple[torch.Tensor, int, int]:
    """The authors' loop on one dense code: (the code it ends with, template latents chosen, repeated choices)."""
    acts = code.clone()
    active = torch.nonzero(acts).flatten().tolist()
    order = torch.argsort((freq[None] - freq[active][:, None]).abs(), dim=1, stable=True)[:, : K + 1]
    chosen, template_picks, repeats, template = [], 0, 0, set(active)
    for i, near in zip(active, order.tolist()):
        value = acts[i].item()
        j = rng.choice([f for f in near if f != i][:K])  # the `not in selected_features` filter removes nothing
        repeats += j in chosen
        template_picks += j in template
        chosen.append(j)
        acts[i] = 0
        acts[j] = value
    return acts, template_picks, repeats


def measure(codes: torch.Tensor, freq: torch.Tensor, seed: int = 0) -> dict[str, float]:
    """Over codes [B, d_sae]: the share of replacements that are template latents, of codes with a latent chosen
    twice, of codes that end with fewer latents than they started with, and the mean number lost."""
    rng = random.Random(seed)
    l0 = (codes != 0).sum(1)
    picks = repeats = shrunk = lost = 0
    for code, k in zip(codes, l0.tolist()):
        out, t, r = as_written(code, freq, rng)
        picks, repeats = picks + t, repeats + (r > 0)
        kept = int((out != 0).sum())
        shrunk, lost = shrunk + (kept < k), lost + (k - kept)
    n = codes.shape[0]
    return {"codes": n, "mean_l0": float(l0.float().mean()), "template_pick_share": picks / max(int(l0.sum()), 1),
            "codes_with_repeat": repeats / n, "codes_losing_latents": shrunk / n, "mean_latents_lost": lost / n}


def toy_codes(n: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Real codes and pool frequencies of the toy SAE at layer 1 (jobs/paper-toy.yaml's)."""
    from synthact.generation.stats import compute_stats
    from synthact.inputs.backends import load_backend
    from synthact.spec import CorpusSpec, ModelSpec, ReferenceSpec, SAESpec, ToyCorpusSpec, ToyModelSpec, ToySAESpec

    b = load_backend(ModelSpec(toy=ToyModelSpec()), SAESpec(toy=ToySAESpec()), CorpusSpec(toy=ToyCorpusSpec()), [1],
                     "cpu", n_ctx=10)
    sae = b.saes[1].sae
    stats = compute_stats(b.model.model, sae, b.corpus, 1, 10, ReferenceSpec(n_prompts=2048), 0, "cpu")
    return sae.encode(stats.acts[:n]).detach(), stats.freq.float(), f"toy SAE (d_sae {sae.cfg.d_sae})"


def random_codes(n: int, d_sae: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Codes and pool frequencies of a random GPT-2-small-shaped model and random SAE (bench.fixtures)."""
    from synthact.bench.fixtures import generation_context

    _, ctx, _ = generation_context("gpt2-small-shape", 1, 10, torch.device("cpu"), d_sae)
    return ctx.sae.encode(ctx.stats.acts[:n]).detach(), ctx.stats.freq.float(), f"random SAE (d_sae {d_sae})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--d-sae", type=int, help="a random SAE of this width instead of the toy SAE")
    parser.add_argument("--codes", type=int, default=500, help="real codes to run the loop on (default 500)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    with torch.no_grad():
        codes, freq, label = random_codes(args.codes, args.d_sae) if args.d_sae else toy_codes(args.codes)
    m = measure(codes, freq)
    print(f"{label}, {m['codes']} real codes, mean L0 {m['mean_l0']:.1f}: template latents chosen "
          f"{m['template_pick_share']:.1%} of replacements; a latent chosen twice in {m['codes_with_repeat']:.1%} "
          f"of codes; {m['codes_losing_latents']:.1%} of codes lose latents (mean {m['mean_latents_lost']:.2f} per code)")


if __name__ == "__main__":
    main()

"""synthact: sweeps of the real-vs-synthetic SAE activation perturbation experiment (Giglemiani et al. 2024).

The Python API (the command line is a thin layer over it)::

    import synthact

    job = synthact.load_job("jobs/paper-toy.yaml")      # or a dict of the same fields; validated
    synthact.grid(job)                                   # the grid's cells, nothing loaded
    sweep = synthact.run_job(job, "runs/paper-toy")      # ray="local" for Ray; rerun to resume
    rows = synthact.read_rows(sweep.out)                 # pandas, one row per curve (read_table: Arrow)
    comparison, verdicts = synthact.compare(sweep.out)   # each kind against real, with intervals
    synthact.differences(sweep.out)                      # between rungs: paired intervals, Holm-adjusted p
    print(synthact.analyse(sweep.out).text())            # all of it, as `synthact compare` prints it
    synthact.report(sweep.out)                           # PNG figures and an HTML page

`import synthact` is cheap: each function imports torch, TransformerLens, Ray or W&B when it needs it.
(`run_job`, not `run`: `synthact.run` is the package of the executors.)
"""

from synthact.errors import SpecError, SynthactError

__version__ = "0.1.0"

_API = ("load_job", "grid", "grid_size", "run_job", "SweepRun", "read_rows", "read_table", "compare", "analyse",
        "differences", "report", "verify")

__all__ = [*_API, "SynthactError", "SpecError", "__version__"]


def __getattr__(name: str):
    """The API functions, from `synthact.api` on first use (so importing synthact loads no heavy library)."""
    if name in _API:
        from synthact import api

        return getattr(api, name)
    raise AttributeError(f"module 'synthact' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})

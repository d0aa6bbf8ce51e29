"""synthact: sweeps of the real-vs-synthetic SAE activation perturbation experiment."""

__version__ = "0.1.0"

"""car-engine: pick the small, high-quality, diverse subset of an instruction corpus."""

__version__ = "0.1.0"

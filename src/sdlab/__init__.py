"""sdlab: Stable Diffusion, opened up."""

__version__ = "0.1.0"

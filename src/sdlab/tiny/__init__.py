"""The bundled model: a tiny Stable Diffusion trained on a synthetic world (sdlab-tiny)."""

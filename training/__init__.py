"""The training code of the bundled model sdlab-tiny (not part of the installed package).

    python -m training --out runs/tiny/model --workdir runs/tiny [--quick]

Read top to bottom: config.py (the recipe), fit.py (the one training loop), vae.py,
clip.py, unet.py (each stage as data for it), train.py (the stages in order, two side by
side in worker processes, workers.py), export.py (the diffusers folder). It uses `sdlab`;
nothing in `sdlab` uses it.
"""

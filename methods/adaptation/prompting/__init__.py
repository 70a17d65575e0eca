"""Prompt learning on open_clip towers: CoOp family, CoCoOp and dual prompts (text side), VPT and MaPLe (image side).

``model.py`` loads the frozen CLIP once per worker process; ``recipes.py``
holds the papers' optimisation settings and the one training loop they all
share; ``text.py`` / ``vision.py`` drive the towers with learnable prompts.
"""

"""Visual reprogramming: frozen CLIP adapted by learned perturbations of its input pixels (VP, AR, AttrVR, BioMedVR).

``frames.py`` says where a perturbation acts, ``scoring.py`` turns reprogrammed
embeddings into logits (class prompts or attribute sentences), ``predictors.py``
holds fitted models as plain arrays, ``learners.py`` the learners.
"""

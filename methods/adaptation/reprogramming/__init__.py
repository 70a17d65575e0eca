"""Visual reprogramming: frozen CLIP adapted by learned perturbations of its input pixels (VP, AR, AttrVR, BioMedVR).

``frames.py`` says where a perturbation acts, ``scoring.py`` turns reprogrammed
embeddings into logits (class prompts or attribute sentences), ``learners.py``
holds the learners and their predictors.
"""

"""The analysis core: plain functions from image bytes to typed results; no queue or database inside.

Stages: decode and validate (:mod:`.decode`) -> segment nuclei (:mod:`.segmentation`) -> crop and classify
cells -> fluorescence intensity -> specimen pattern -> overlay. :mod:`.types` holds the shared types.

Model families live in :mod:`.models` (CNN classifier, U-Net) and :mod:`.texture_model` (handcrafted
descriptors from :mod:`.descriptors` + LightGBM).
"""

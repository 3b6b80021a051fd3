"""The offline scene describer (``VISION_MODEL=builtin``) and everything only it uses.

``describer`` composes the detectors (``ssd_person``, ``centernet``, ``blazeface``, ``emotion``,
each a :class:`~imgsvc.vision.base.Detector`) with the classifier from :mod:`imgsvc.vision.classifier`;
``sentences`` weighs what they found and writes the sentence (pure functions); ``boxes`` holds the box
geometry they share (NMS, overlap); ``weights`` fetches their weight files (``imgsvc fetch-models``, and
standalone in the Dockerfile, so it imports nothing but the standard library). The graphs they run
are read and executed by :mod:`imgsvc.vision.graphs`.
"""

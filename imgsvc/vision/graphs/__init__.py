"""The graph readers and executor: TensorFlow GraphDef and TF.js graph models run in torch.

`graphdef` and `tfjs` read the two file formats into one :class:`~imgsvc.vision.graphs.graph.Graph`;
`compiler` turns the part of it a detector needs into a :class:`~imgsvc.vision.graphs.compiler.Program`,
using the op table in `ops`; `images` turns PIL images into its input batches. Nothing here knows
which model it runs: the detectors in :mod:`imgsvc.vision.scene` do.
"""

"""export: the model production runs. ONNX export (traced, or the head joined to the
embedding graph), composed models remembered by content, the check against torch on real
held-out images, the export step of a fit, and the Predictor (onnxruntime, numpy and Pillow
only: importing it imports no torch).

May import: core, data, features, train.
"""

"""export: the model production runs. ONNX export (traced, or the head joined to the
embedding graph), composed models remembered by content, the check against torch on real
held-out images, the export step of a fit, the int8 copy kept only where it pays (quantize:
onnxruntime static quantisation measured side by side with fp32; no torch), and the Predictor
(onnxruntime, numpy and Pillow only: importing it imports no torch).

May import: core, data, features, train.
"""

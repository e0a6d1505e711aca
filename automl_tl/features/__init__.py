"""features: what the frozen backbone computes, computed once. The feature extractor and the
views of it a head may read (stage x pooling grid, joined views), the stage runners
(onnxruntime or torch) and the checked ONNX stage graph, the feature store (SQLite index +
memory-mapped shards, its format and maintenance), the FeatureCache a fit reads rows through,
the memo of facts, the compiled ops with their torch reference, and the rest of the cache
folder's housekeeping.

May import: core, data.
"""

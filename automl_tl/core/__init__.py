"""core: the vocabulary every room shares. Errors (one line each, naming the value and the
fix), the console (notes, warnings, progress), atomic files, what the machine offers (cores,
memory, batch size, device, execution providers), accuracy statistics, torch.distributed
helpers, and the plugin contract's data types.

May import: the standard library and numpy; torch and onnxruntime only inside functions.
Nothing else of automl_tl.
"""

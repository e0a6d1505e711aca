"""Run under torchrun: embed a folder with sharding; rank 0 saves the features (.npy)."""

import sys

import numpy as np
import torch

from automl_tl.core.distributed import init_distributed
from automl_tl.data.files import expand_paths
from automl_tl.features.embed import embed
from automl_tl.features.extractor import FeatureExtractor
from automl_tl.plugins.manager import get_plugins

if __name__ == "__main__":
    folder, out = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    rank, world = init_distributed()
    spec = get_plugins().backbone("efficientnet_lite0")
    fx = FeatureExtractor(spec.build(), spec.preprocessing, len(spec.stages) - 1)
    feats = embed(fx, expand_paths([folder]), spec.preprocessing, batch_size=4)
    if rank == 0:
        np.save(out, np.concatenate(feats, axis=1))
        print(f"world {world} rows {len(feats[0])}")

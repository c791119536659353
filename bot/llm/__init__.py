"""The language model: presets, loading and generation, streaming, adapter hot swap and LoRA training."""

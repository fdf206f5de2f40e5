"""Bytes on disk: safetensors, checkpoints and config.json, the streaming layout and its expert store, convert,
synth, the Hugging Face cache, platform I/O. See docs/reference/streaming-format.md."""

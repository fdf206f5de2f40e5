"""The model and generation: the decoder (model.py), attention / Gated DeltaNet / MoE blocks, the KV and recurrent
cache, generation (generate.py), the tokenizer, the one loader (loader.py), backends and their interfaces."""

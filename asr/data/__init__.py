"""Data: manifests (`manifest`), datasets and collation (`dataset`), the duration-bucketing
batch sampler (`sampler`) and Hugging Face `datasets` sources (`hf`). No Lightning here."""

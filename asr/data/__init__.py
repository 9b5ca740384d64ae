"""Data: manifests (`manifest`), datasets and collation (`dataset`), the duration-bucketing
batch sampler (`sampler`), Hugging Face `datasets` sources (`hf`), Parquet shards of a corpus
(`pack`) and training from a stream of them (`stream`). No Lightning here."""

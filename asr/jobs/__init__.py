"""Corpus-scale jobs on one or many processes (Lightning's launcher: DDP on CPU or GPU, srun or
torchrun on a cluster): `transcribe_corpus`, what `asr transcribe --manifest` runs. Training is
in `asr.training`; the engine every job runs is `asr.inference.engine`."""

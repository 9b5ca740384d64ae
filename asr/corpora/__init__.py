"""Corpora: LibriSpeech and AN4 (download, manifests), the synthetic eSpeak NG demo corpus
(`synthetic`, `sentences`, `espeak`) and checked, resumable downloads (`download`)."""

"""Scoring: WER/CER with jiwer and bootstrap intervals (`metrics`), transcript files
(`transcripts`), reports (`report`, the only matplotlib importer), whole evaluations
(`evaluate`) and the search for an LM's weight and word score on a validation set (`tune`)."""

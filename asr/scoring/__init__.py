"""Scoring: WER/CER with jiwer and bootstrap intervals (`metrics`), transcript files
(`transcripts`), reports (`report`, the only matplotlib importer) and whole evaluations
(`evaluate`)."""

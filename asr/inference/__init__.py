"""Inference: decoding (greedy, beam search with a KenLM n-gram and a lexicon), n-gram LMs,
lexicons, word timings, transcription of any audio (`transcribe`) and output formats.
Imports neither Lightning nor matplotlib."""

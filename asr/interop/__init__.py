"""Interoperability: models from other toolkits and the Hugging Face Hub."""

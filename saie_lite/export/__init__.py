"""Exporting a trained run: merged Hugging Face weights, GGUF (with an Ollama Modelfile), MLX."""

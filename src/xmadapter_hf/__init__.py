"""xmadapter-hf: cache-based few-shot adapters for frozen Hugging Face CLIP models."""

__version__ = "0.1.0"

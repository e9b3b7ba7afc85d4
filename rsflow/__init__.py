"""rsflow: ask questions about remote-sensing imagery with a frozen encoder, a frozen LLM and a normalizing flow."""

__version__ = "0.1.0"

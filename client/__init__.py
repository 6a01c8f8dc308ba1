"""Python SDK and command-line client for the inference router."""

from client.sdk import InferenceClient

__all__ = ["InferenceClient"]

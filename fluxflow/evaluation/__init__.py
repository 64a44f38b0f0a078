"""Quality measures computed by the trainer itself (held-out reconstructions, prompt adherence on `shapes`)."""

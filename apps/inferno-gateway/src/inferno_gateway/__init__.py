"""Routes OpenAI requests across many Inferno daemons found through discovery."""

__all__: list[str] = []

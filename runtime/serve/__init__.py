"""``solidx serve``: an OpenAI-compatible HTTP server (FastAPI on uvicorn) over an async front
that steps the same ``LLMEngine`` on a background thread. Needs the ``serve`` extra; nothing
outside this package imports it."""

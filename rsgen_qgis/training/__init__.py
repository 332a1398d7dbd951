"""Training side: torch, transformers and diffusers live here only; the plugin never imports this package."""

"""Conditions: how prompts, metadata, layouts, masks and guides are encoded for a model, attribute rules that
turn map features into layout classes, inpainting masks and seamless fills, and sample filters."""

"""The sampling engine: request -> grid -> latent windows -> samplers -> decode -> COG, one loop for every kind
of model (pixel packages are latent packages whose autoencoder is the identity), single requests and
world-anchored large areas, cascade, guidance, inpainting and variation (docs/ENGINE.md)."""

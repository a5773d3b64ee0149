"""kiln-shapes: a small Stable-Diffusion-architecture model of captioned shapes, trained by Kiln."""

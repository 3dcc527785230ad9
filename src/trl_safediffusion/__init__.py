"""trl-safediffusion."""

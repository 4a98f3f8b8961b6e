"""The models moved to vhred/models/ (one module per family); these names stay for code that
imports them from here. VHRED(cfg, vocab) builds the family cfg.model names, as it always did."""
from .models import FAMILIES, GaussianNet, Packing, build, gaussian_kl, gaussian_log_density, objective, reparameterize

VHRED = build

__all__ = ["FAMILIES", "VHRED", "GaussianNet", "Packing", "build", "gaussian_kl", "gaussian_log_density",
           "objective", "reparameterize"]

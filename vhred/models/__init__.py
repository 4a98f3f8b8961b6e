"""The model family: one module per family over the shared layers (layers.py). A family is a
class meeting the contract written in layers.Hierarchical, added here with one line."""
from .cvae import CVAE
from .dialogwae import DialogWAE
from .hred import HRED
from .layers import GaussianNet, Packing, gaussian_kl, gaussian_log_density, objective, reparameterize
from .vhcr import VHCR
from .vhred import VHRED

FAMILIES = {
    "vhred": VHRED,
    "hred": HRED,
    "cvae": CVAE,
    "vhcr": VHCR,
    "dialogwae": DialogWAE,
}


def build(cfg, vocab_size: int):
    """The network of a ModelConfig (cfg.model names its family) over vocab_size pieces."""
    return FAMILIES[cfg.model](cfg, vocab_size)


def family_defaults(name: str) -> dict:
    """Settings a family changes from the ModelConfig defaults when a config leaves them out."""
    return dict(getattr(FAMILIES.get(name), "DEFAULTS", {}))


def readers(key: str) -> list[str]:
    """The families that read a ModelConfig key only some families read (their OWN_SETTINGS);
    [] for a key every family reads."""
    return [name for name, family in FAMILIES.items() if key in family.OWN_SETTINGS]


__all__ = ["FAMILIES", "build", "family_defaults", "readers", "GaussianNet", "Packing", "gaussian_kl",
           "gaussian_log_density", "objective", "reparameterize"]

"""vhred: VHRED and HRED dialogue response generation in PyTorch.

    import vhred
    bot = vhred.load("runs/dailydialog-vhred")          # a run folder or a .pt file
    print(bot.respond(["Hi! Where is the station?"])[0].text)

The API (vhred/api.py) is load, Bot and Candidate. They are imported on first use, so that
`import vhred.config` or `vhred --help` does not pay for importing torch.
"""
from typing import TYPE_CHECKING

__all__ = ["Bot", "Candidate", "load"]

if TYPE_CHECKING:   # for type checkers and editors; at run time __getattr__ below
    from .api import Bot, Candidate, load


def __getattr__(name: str):
    if name in __all__:
        from . import api
        return getattr(api, name)
    raise AttributeError(f"module 'vhred' has no attribute '{name}'")

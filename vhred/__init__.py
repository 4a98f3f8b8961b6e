"""vhred: variational dialogue response generation in PyTorch: VHRED, with HRED, CVAE, VHCR and DialogWAE beside it.

    import vhred
    bot = vhred.load("runs/dailydialog-cpu-vhred")        # a run folder or a .pt file
    print(bot.respond(["Hi! Where is the station?"])[0].text)

The API (vhred/api.py) is load, Bot and Candidate. They are imported on first use, so that
`import vhred.config` or `vhred --help` does not pay for importing torch.
"""
import sys
from typing import TYPE_CHECKING

from .stops import catch_stops_while_starting

__all__ = ["Bot", "Candidate", "load"]


# `python -m vhred.<command>`: a Ctrl-C while torch loads (seconds, before the command's own
# handling in cli.command starts) ends it as one does later, not with an import's traceback. Only
# for vhred's own commands: a program that imports vhred keeps its own Ctrl-C.
_argv = getattr(sys, "orig_argv", [])
if "-m" in _argv[:-1] and _argv[_argv.index("-m") + 1].split(".")[0] == "vhred":
    catch_stops_while_starting()

if TYPE_CHECKING:   # for type checkers and editors; at run time __getattr__ below
    from .api import Bot, Candidate, load


def __getattr__(name: str):
    if name in __all__:
        from . import api
        return getattr(api, name)
    raise AttributeError(f"module 'vhred' has no attribute '{name}'")

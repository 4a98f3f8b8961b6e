"""The nearest-neighbour row under DialogWAE's protocol; the command lives in the package
(`vhred.nearest`) so an installed vhred has it too:

    python -m eval.nearest_neighbour [--config configs/dailydialog-cpu.yaml] [key=value ...]
"""
from vhred import cli
from vhred.nearest import main

if __name__ == "__main__":
    cli.INVOKED_AS = "python -m eval.nearest_neighbour"   # its --help names the command as typed
    main()

"""Response ranking of a checkpoint; the command lives in the package (`vhred.rank`, also
`vhred rank`) so an installed vhred has it too:

    python -m eval.rank --checkpoint runs/x/best.pt [--split test] [--max-contexts N]
"""
from vhred import cli
from vhred.rank import main

if __name__ == "__main__":
    cli.INVOKED_AS = "python -m eval.rank"   # its --help names the command as typed
    main()

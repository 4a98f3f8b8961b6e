"""The full evaluation of a checkpoint; the command lives in the package (`vhred.evaluate`)
so an installed vhred has it too:

    python -m eval.evaluate --checkpoint runs/x/best.pt --split test --num-samples 10
"""
from vhred import cli
from vhred.evaluate import main

if __name__ == "__main__":
    cli.INVOKED_AS = "python -m eval.evaluate"   # its --help names the command as typed
    main()

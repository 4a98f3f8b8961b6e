"""vhred: VHRED and HRED dialogue response generation in PyTorch."""

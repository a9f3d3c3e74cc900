"""The sandbox that runs model-written programs; executor.py is its public face and documents what
it defends and what it does not. Standard library only: the server process imports this package
under ``python -S -s`` (nothing here may import the rest of azr_trainer)."""
